"""Every runtime patch of transformers' internals refuses to run, with one clear line naming the
installed transformers and the tested range, when transformers moves what it patches: each test
simulates such an upstream change (a keyword renamed, a patched function gone, a patched call
no longer made) that would otherwise silently give other logits."""

import functools
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import transformers

from longctx.models import scan_carry
from longctx.models.stateful import _step
from longctx.models import transformers_compat as compat
from longctx.models.transformers_compat import TransformersChangedError, cache_keyword, output_cache, with_cache
from tiny_models import tiny_config

VOCAB = 64


def tiny(family: str):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(tiny_config(family, VOCAB)).eval()


def chunked_logits(model, family: str, chunk: int = 16) -> torch.Tensor:
    """Last logits of 60 tokens fed through stateful.py's loop in chunks (2 rows)."""
    ids = torch.randint(5, VOCAB, (2, 60), generator=torch.Generator().manual_seed(1))
    state = None
    with torch.no_grad():
        for start in range(0, ids.shape[1], chunk):
            logits, state = _step(model, family, ids[:, start:start + chunk], state)
    return logits


def assert_names_version(error: pytest.ExceptionInfo) -> None:
    """One line naming the installed transformers and the tested range."""
    message = str(error.value)
    assert "\n" not in message
    assert f"transformers {transformers.__version__}" in message and compat.tested_range() in message, message


def test_the_tested_range_is_pyprojects_bounded_requirement():
    """The range the errors name is pyproject's, it has an upper bound, and docs/run.md says it."""
    repo = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    wanted = [r for r in pyproject["project"]["dependencies"] if r.startswith("transformers")]
    assert wanted == [f"transformers{compat.tested_range()}"] and "<" in compat.tested_range()
    assert f"transformers `{compat.tested_range()}`" in (repo / "docs" / "run.md").read_text()


def test_the_cache_keyword_is_the_one_the_forward_declares():
    """`cache` (transformers >= 5.24), else the older name; never a name the forward would take
    into **kwargs unread."""
    def new(self, input_ids, cache=None, **kwargs): ...
    def old(self, input_ids, past_key_values=None, **kwargs): ...
    def mamba_old(self, input_ids, cache_params=None, **kwargs): ...
    def none(self, input_ids, **kwargs): ...

    assert [cache_keyword(f) for f in (new, old, mamba_old)] == ["cache", "past_key_values", "cache_params"]
    with pytest.raises(TransformersChangedError, match="takes none of the keywords") as error:
        cache_keyword(none)
    assert_names_version(error)
    model = tiny("llama")
    out = model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True)
    assert output_cache(out) is not None and with_cache(model, 1) == {cache_keyword(type(model).forward): 1}


@pytest.mark.parametrize("family", ["mamba", "falcon_mamba"])
def test_mamba1_carry_refuses_a_mixer_that_declares_no_cache(family, monkeypatch):
    """transformers 5.24 renamed the mixers' `cache_params` to `cache`, and the carry's hook, which
    read the old name, silently stopped applying. Here the mixer's forward takes its cache under a
    name the carry does not know (into **kwargs): the carry refuses instead of scanning from zero."""
    model = tiny(family)
    mixer_class = type(scan_carry.carrying_mixers(model)[0])
    plain = mixer_class.forward

    def forward(self, hidden_states, attention_mask=None, **kwargs):  # the cache hides in **kwargs
        return plain(self, hidden_states, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(mixer_class, "forward", forward)
    with pytest.raises(TransformersChangedError, match="takes none of the keywords") as error:
        chunked_logits(model, family)
    assert_names_version(error)


def test_mamba1_carry_refuses_a_modelling_module_without_its_scan(monkeypatch):
    """The scan function the carry swaps is gone from the modelling module (renamed): the carry
    refuses as it starts."""
    model = tiny("mamba")
    module = sys.modules[type(scan_carry.carrying_mixers(model)[0]).__module__]
    monkeypatch.setattr(module, "selective_scan_renamed", getattr(module, scan_carry.SCAN), raising=False)
    monkeypatch.delattr(module, scan_carry.SCAN)
    with pytest.raises(TransformersChangedError, match=f"has no {scan_carry.SCAN}") as error:
        with scan_carry.scans_carry_state(model):
            pass
    assert_names_version(error)


def test_mamba1_carry_refuses_a_mamba_model_whose_mixers_it_cannot_find():
    """The mixers no longer look like Mamba-1's (x_proj renamed): in a Mamba model that is
    transformers changing, not a model with nothing to carry."""
    model = tiny("mamba")
    for mixer in scan_carry.carrying_mixers(model):
        mixer.projection = mixer.x_proj
        del mixer.x_proj
    with pytest.raises(TransformersChangedError, match="no Mamba-1 mixer") as error:
        with scan_carry.scans_carry_state(model):
            pass
    assert_names_version(error)


def test_mamba1_carry_refuses_a_mixer_that_no_longer_calls_the_swapped_scan(monkeypatch):
    """The mixer scans with a function bound elsewhere (a kernel looked up at import, say): the
    swapped scan never runs on a chunk that continues the cache."""
    model = tiny("mamba")
    mixer_class = type(scan_carry.carrying_mixers(model)[0])
    module = sys.modules[mixer_class.__module__]
    own_scan, plain = getattr(module, scan_carry.SCAN), mixer_class.forward

    @functools.wraps(plain)
    def forward(self, *args, **kwargs):
        swapped = getattr(module, scan_carry.SCAN)
        setattr(module, scan_carry.SCAN, own_scan)
        try:
            return plain(self, *args, **kwargs)
        finally:
            setattr(module, scan_carry.SCAN, swapped)

    monkeypatch.setattr(mixer_class, "forward", forward)
    with pytest.raises(TransformersChangedError, match="did not call") as error:
        chunked_logits(model, "mamba")
    assert_names_version(error)


def test_mamba1_carry_refuses_a_mixer_called_without_its_models_cache():
    """The block stops handing the mixer the cache the model was given (here a hook registered
    before the carry's drops it)."""
    model = tiny("mamba")

    def drop(_mixer, args, kwargs):
        return args, {**{k: v for k, v in kwargs.items() if k not in ("cache", "cache_params")}, "cache": None}

    for mixer in scan_carry.carrying_mixers(model):
        mixer.register_forward_pre_hook(drop, with_kwargs=True)
    with pytest.raises(TransformersChangedError, match="without the cache its model was given") as error:
        chunked_logits(model, "mamba")
    assert_names_version(error)


def test_recurrent_gemma_convolution_fix_refuses_a_block_that_bypasses_it(monkeypatch):
    """The recurrent block computes its convolution without calling `conv_1d` (the instance's
    forward the fix replaces): the fix would not apply, so the call raises."""
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRecurrentBlock

    model = tiny("recurrent_gemma")
    plain = RecurrentGemmaRecurrentBlock.forward

    @functools.wraps(plain)
    def forward(self, *args, **kwargs):
        fixed = self.conv_1d.__dict__.pop("forward", None)  # the class's convolution, not the fix
        try:
            return plain(self, *args, **kwargs)
        finally:
            if fixed is not None:
                self.conv_1d.forward = fixed

    monkeypatch.setattr(RecurrentGemmaRecurrentBlock, "forward", forward)
    with pytest.raises(TransformersChangedError, match="did not run their conv_1d through the fix") as error:
        chunked_logits(model, "recurrent_gemma")
    assert_names_version(error)


def test_recurrent_gemma_convolution_fix_refuses_a_block_without_its_state():
    model = tiny("recurrent_gemma")
    for module in model.modules():
        if hasattr(module, "conv1d_state"):
            del module.conv1d_state
    with pytest.raises(TransformersChangedError, match="no conv_1d convolution or conv1d_state") as error:
        chunked_logits(model, "recurrent_gemma")
    assert_names_version(error)


def continuous_tokens(model) -> list[list[int]]:
    from longctx.models.continuous import greedy_continuous

    prompts = [list(range(5, 5 + n)) for n in (20, 13, 27)]
    with torch.no_grad():
        return greedy_continuous(model, prompts, 4, set(), 2, 0)


def test_row_attention_refuses_a_step_its_attention_function_did_not_read(monkeypatch):
    """The name the row attention is registered under no longer reaches our function (here the
    registry maps it back to plain SDPA, as if transformers looked attention up elsewhere): each
    step's rows would attend over columns that are not theirs, so the step raises."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from longctx.models import row_attention

    assert continuous_tokens(tiny("llama"))  # the row attention as registered: no error
    plain = row_attention.use_row_attention

    def registered_elsewhere(model):
        used = plain(model)
        AttentionInterface.register(row_attention.NAME, sdpa_attention_forward)
        return used

    monkeypatch.setattr(row_attention, "use_row_attention", registered_elsewhere)
    try:
        with pytest.raises(TransformersChangedError, match="attention function read 0") as error:
            continuous_tokens(tiny("llama"))
    finally:
        AttentionInterface.register(row_attention.NAME, row_attention.row_sdpa_forward)
    assert_names_version(error)


def test_reserved_cache_refuses_a_model_that_writes_around_its_layers(monkeypatch):
    """transformers stops writing the cache through each layer's `update` (here: DynamicLayer's
    own update runs in place of ours): the reserved room would stay unread, so the prefill raises."""
    from transformers.cache_utils import DynamicLayer

    from longctx.models.kv_cache import ReservedLayer
    from longctx.models.stateful import greedy_shrinking

    monkeypatch.setattr(ReservedLayer, "update", DynamicLayer.update)
    ids = torch.tensor([[5, 6, 7, 8], [2, 5, 6, 9]])
    with pytest.raises(TransformersChangedError, match="cache layers hold 0 positions") as error:
        greedy_shrinking(tiny("llama"), ids, torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]]), 3, set())
    assert_names_version(error)


def test_a_patch_error_is_one_line_and_exit_code_2_at_the_command_line(monkeypatch, capsys, tmp_path):
    """The CLI prints the error as one line and exits with 2, as for any error the user can act on."""
    from longctx import cli

    def run(args):
        raise TransformersChangedError("The Mamba-1 state carry cannot apply on transformers 9.0")

    monkeypatch.setattr(cli, "cmd_tasks", run)
    assert cli.main(["tasks"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "longctx: error: The Mamba-1 state carry cannot apply on transformers 9.0"]
