"""What longctx assumes of transformers: the versions it is tested on, the keyword a model takes
its cache under, and the one error raised when a patch of transformers' internals would not apply.

longctx changes four transformers internals while it runs (scan_carry.py: the Mamba-1 scan goes on
from the carried state; stateful.py: RecurrentGemma's convolution sees the chunk before;
row_attention.py: an attention function of our own for rows of their own; kv_cache.py: cache
layers with their room reserved). A transformers release can move what one of them patches (5.24
renamed the mixers' `cache_params` to `cache`), and a patch that no longer finds its target does
not fail by itself: the model silently computes something else (a chunked Mamba prompt keeping
only its last chunk). So every patch checks that it found what it patches and that it ran where it
must, and otherwise raises `TransformersChangedError`, naming the installed version and the
tested range: never a silent no-op.
"""

from __future__ import annotations

import functools
import inspect
from importlib import metadata

from ..errors import UsageError

# Before transformers 5.24 the cache keyword was one of these (5.24 renamed both to `cache`, the
# old names deprecated); a forward that takes neither nor `cache` would swallow it into **kwargs.
LEGACY_CACHE_KEYWORDS = ("past_key_values", "cache_params")


class TransformersChangedError(UsageError):
    """A runtime patch of transformers' internals did not find what it patches, or did not run
    where it must: the installed transformers is outside the tested range, or moved something."""


@functools.cache
def tested_range() -> str:
    """The transformers versions the test suite passes on: our own installed requirement
    (pyproject.toml is the one place the range is written)."""
    from packaging.requirements import Requirement

    try:
        requirements = metadata.requires("longctx") or []
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "(see pyproject.toml)"
    for line in requirements:
        requirement = Requirement(line)
        if requirement.name == "transformers" and requirement.marker is None:
            return ",".join(sorted(map(str, requirement.specifier), key=lambda bound: bound.startswith("<")))
    return "(see pyproject.toml)"


def changed(patch: str, what: str) -> TransformersChangedError:
    """The error for `patch` (what longctx changes) when `what` (what it found) breaks it."""
    import transformers

    return TransformersChangedError(
        f"{patch} cannot apply on transformers {transformers.__version__}: {what}. longctx is tested on "
        f"transformers {tested_range()}; install one of those (pip install 'transformers{tested_range()}') "
        f"or see docs/run.md, 'Versions'")


@functools.cache
def cache_keyword(forward) -> str:
    """The keyword under which `forward` (a model's or a layer's, unbound) takes its cache:
    `cache` from transformers 5.24 on, `past_key_values` or `cache_params` before. Passing a
    deprecated name warns on every call; passing a name the forward does not declare would
    drop the cache into **kwargs unread, so no name is guessed."""
    names = inspect.signature(forward).parameters
    for name in ("cache",) + LEGACY_CACHE_KEYWORDS:
        if name in names:
            return name
    raise changed("Passing the cache", f"{forward.__qualname__} takes none of the keywords cache, "
                  f"{', '.join(LEGACY_CACHE_KEYWORDS)}")


def with_cache(model, cache) -> dict:
    """`{keyword: cache}` for a call of `model` (see `cache_keyword`)."""
    return {cache_keyword(type(model).forward): cache}


def cache_argument(forward, args: tuple, kwargs: dict):
    """The cache a call `forward(self, *args, **kwargs)` got, whatever keyword or position it came
    under (a forward hook sees the call before transformers renames a deprecated keyword)."""
    for name in ("cache",) + LEGACY_CACHE_KEYWORDS:
        if kwargs.get(name) is not None:
            return kwargs[name]
    at = _cache_position(forward)
    return args[at] if at < len(args) else None


@functools.cache
def _cache_position(forward) -> int:
    """Where the cache comes among a call's positional arguments (after self)."""
    return list(inspect.signature(forward).parameters).index(cache_keyword(forward)) - 1


def output_cache(output):
    """The cache a model's output carries (`cache` from 5.24 on; `past_key_values` or
    `cache_params` before), read without the deprecated aliases' warnings."""
    for name in ("cache",) + LEGACY_CACHE_KEYWORDS:
        if name in output:  # ModelOutput is a dict of its set fields
            return output[name]
    return None
