"""RULER's task templates, answer prefixes and model templates, character for character.

Source: NVIDIA/RULER `scripts/data/synthetic/constants.py` and `scripts/data/template.py` at
c3f5e3b ("main") and 2870803 (2024-07, "2024", the code of the Huang 2024 study), as quoted in
ruler-spec.md section 3. Templates are data, so they are kept verbatim here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError

ERAS = ("main", "2024")


@dataclass(frozen=True)
class TaskTemplate:
    template: str
    answer_prefix: str
    tokens_to_generate: int


TASK_TEMPLATES: dict[str, TaskTemplate] = {
    "niah": TaskTemplate(
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
        "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
        128,
    ),
    "vt": TaskTemplate(
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
        "are assigned the value {query}, they are: ",
        30,
    ),
    "cwe": TaskTemplate(
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n{context}\n"
        "Question: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
        120,
    ),
    "fwe": TaskTemplate(
        "Read the following coded text and track the frequency of each coded word. Find the three most "
        "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore "
        "the dots '....'. What are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
        50,
    ),
    "qa": TaskTemplate(
        "Answer the question based on the given documents. Only give me the answer and do not output any "
        "other words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on "
        "the given documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
        " Answer:",
        32,
    ),
}

# The 2024 code had this typo in the VT answer prefix (fixed upstream in 4a216f4, 2025-05-13).
VT_ANSWER_PREFIX_2024 = TASK_TEMPLATES["vt"].answer_prefix.replace("are assigned", "are assgined")

MODEL_TEMPLATES: dict[str, str] = {
    "base": "{task_template}",
    "meta-chat": "[INST] {task_template} [/INST]",
    "vicuna-chat": "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: {task_template} ASSISTANT:",
    "lwm-chat": "You are a helpful assistant. USER: {task_template} ASSISTANT: ",
    "command-r-chat": "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>{task_template}<|END_OF_TURN_TOKEN|>"
    "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    "chatglm-chat": "[gMASK]sop<|user|> \n {task_template}<|assistant|> \n ",
    "RWKV": "User: hi\n\nAssistant: Hi. I am your assistant and I will provide expert full response in full "
    "details. Please feel free to ask any question and I will always answer it\n\nUser: {task_template}\n\nAssistant:",
    "Phi3": "<|user|>\n{task_template}<|end|>\n<|assistant|>\n",
    "meta-llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{task_template}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "jamba": "<|startoftext|><|bom|><|system|> <|eom|><|bom|><|user|> {task_template}<|eom|><|bom|><|assistant|>",
    "nemotron5-instruct": "<SPECIAL_10>System\n\n<SPECIAL_11>User\n{task_template}\n<SPECIAL_11>Assistant\n",
}
MODEL_TEMPLATES_2024 = ("base", "meta-chat", "vicuna-chat", "lwm-chat", "command-r-chat", "chatglm-chat", "RWKV")

# Use the tokenizer's own chat template (one user turn, generation prompt added).
CHAT = "chat"
_SENTINEL = "\x00LONGCTX_TASK\x00"


@dataclass(frozen=True)
class Wrapper:
    """The model template split around the task text: prompt = before + task + after + answer prefix."""

    name: str
    before: str
    after: str


def model_wrapper(name: str, tokenizer=None) -> Wrapper:
    if name == CHAT:
        if tokenizer is None or not tokenizer.chat_template:
            raise UsageError("model template 'chat' needs a tokenizer with a chat template; use 'base' or a RULER template")
        rendered = tokenizer.hf.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if rendered.count(_SENTINEL) != 1:
            raise UsageError("the tokenizer's chat template alters the message text; use a RULER model template")
        before, after = rendered.split(_SENTINEL)
        return Wrapper(CHAT, before, after)
    if name not in MODEL_TEMPLATES:
        known = ", ".join(list(MODEL_TEMPLATES) + [CHAT])
        raise UsageError(f"unknown model template {name!r}; known: {known}")
    before, after = MODEL_TEMPLATES[name].split("{task_template}")
    return Wrapper(name, before, after)


def singular_rewrite(text: str) -> str:
    """RULER's rewrite of the NIAH template when one value is asked for (v*q == 1)."""
    return text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")
