"""vLLM general plugin (entry point ``vllm.general_plugins: kvrl_kimivl``).

vLLM serves ``kimi_vl`` natively but loads the HF processor through ``AutoProcessor``; upstream that
is remote code. vLLM calls this in every process it starts (engine core, workers), so kvrl's
processor is registered there too and no ``trust_remote_code`` is needed.
"""


def register() -> None:
    from .registration import register as register_auto

    register_auto()
