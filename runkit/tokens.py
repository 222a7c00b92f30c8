"""Strings of Kimi-VL-Thinking's format that every layer agrees on: ``◁think▷ … ◁/think▷ answer``."""

THINK_OPEN, THINK_CLOSE = "◁think▷", "◁/think▷"
