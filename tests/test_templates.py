"""Template strings match ruler-spec.md character for character (its repr() literals are parsed here)."""

import ast
import re

from conftest import SHARED

from longctx.templates import MODEL_TEMPLATES, TASK_TEMPLATES, VT_ANSWER_PREFIX_2024, singular_rewrite

SPEC = (SHARED / "ruler-spec.md").read_text()


def _literal(name: str, block: str) -> str:
    m = re.search(rf"^{name}\s*=\s*(.+)$", block, re.M)
    return ast.literal_eval(m.group(1))


def test_task_templates_match_spec():
    for family, heading in [("niah", "niah"), ("vt", "variable_tracking"), ("cwe", "common_words_extraction"),
                            ("fwe", "freq_words_extraction"), ("qa", "qa")]:
        block = SPEC.split(f"**`{heading}`**", 1)[1].split("```", 2)[1]
        assert TASK_TEMPLATES[family].template == _literal("template", block), family
        assert TASK_TEMPLATES[family].answer_prefix == _literal("answer_prefix", block), family
        ttg = int(re.search(rf"\*\*`{heading}`\*\* — `tokens_to_generate = (\d+)`", SPEC).group(1))
        assert TASK_TEMPLATES[family].tokens_to_generate == ttg


def test_model_templates_match_spec():
    block = SPEC.split("#### Model templates", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    spec = dict(ast.literal_eval("{" + block + "}"))
    assert spec == MODEL_TEMPLATES


def test_singular_rewrite_matches_spec():
    block = SPEC.split("#### NIAH after the singular rewrite", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    expected = ast.literal_eval(block.strip())
    t = TASK_TEMPLATES["niah"]
    assert singular_rewrite(t.template + " " + t.answer_prefix.lstrip()) == expected


def test_2024_vt_prefix_has_the_paper_era_typo():
    assert "are assgined the value" in VT_ANSWER_PREFIX_2024
