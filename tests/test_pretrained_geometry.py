"""tools/pretrained_geometry.py: a llama2.c checkpoint in transformers computes what llama2.c's run.c computes."""
import math
import struct

import numpy as np
import pytest

import pretrained_geometry  # tools/ is on the tests' path (conftest)
from router_overflow import mean_over_rms, random_router_split


def _write_checkpoint(path, dim=16, hidden=24, layers=2, heads=4, kv_heads=2, vocab=40, seq_len=32, tied=True):
    rng = np.random.default_rng(3)
    head_size, kv_dim = dim // heads, dim // heads * kv_heads
    shapes = [(vocab, dim), (layers, dim), (layers, dim, dim), (layers, kv_dim, dim), (layers, kv_dim, dim),
              (layers, dim, dim), (layers, dim), (layers, hidden, dim), (layers, dim, hidden), (layers, hidden, dim),
              (dim,), (2, seq_len, head_size // 2)] + ([] if tied else [(vocab, dim)])
    arrays = [rng.normal(0, 0.5, s).astype(np.float32) for s in shapes]
    arrays[1] += 1.0  # norm weights near 1, as trained ones are
    with open(path, "wb") as fh:
        fh.write(struct.pack("7i", dim, hidden, layers, heads, kv_heads, vocab if tied else -vocab, seq_len))
        for a in arrays:
            fh.write(a.tobytes())
    return arrays


def _run_c_logits(arrays, tokens, dim, hidden, layers, heads, kv_heads, tied):
    """Logits of every position by llama2.c's run.c forward (token by token with a KV cache), in numpy float64:
    RMSNorm eps 1e-5, rotary over interleaved pairs (i, i+1) with frequency 10000^-(i mod head_size / head_size),
    grouped heads (head h reads key/value head h / (heads / kv_heads)), SwiGLU w2(silu(w1 x) * w3 x)."""
    emb, att_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3, final_norm = [a.astype(np.float64) for a in arrays[:11]]
    cls = emb if tied else arrays[12].astype(np.float64)
    head_size, kv_dim, group = dim // heads, dim // heads * kv_heads, heads // kv_heads
    keys = np.zeros((layers, len(tokens), kv_dim))
    values = np.zeros((layers, len(tokens), kv_dim))

    def rmsnorm(x, w):
        return x / np.sqrt((x * x).mean() + 1e-5) * w

    out = []
    for pos, token in enumerate(tokens):
        x = emb[token].copy()
        for layer in range(layers):
            xb = rmsnorm(x, att_norm[layer])
            q, k, v = wq[layer] @ xb, wk[layer] @ xb, wv[layer] @ xb
            for i in range(0, dim, 2):
                angle = pos / 10000.0 ** ((i % head_size) / head_size)
                cos, sin = math.cos(angle), math.sin(angle)
                for vec in ((q, k) if i < kv_dim else (q,)):
                    vec[i], vec[i + 1] = vec[i] * cos - vec[i + 1] * sin, vec[i] * sin + vec[i + 1] * cos
            keys[layer, pos], values[layer, pos] = k, v
            attended = np.zeros(dim)
            for h in range(heads):
                kv = slice((h // group) * head_size, (h // group + 1) * head_size)
                scores = keys[layer, :pos + 1, kv] @ q[h * head_size:(h + 1) * head_size] / math.sqrt(head_size)
                weights = np.exp(scores - scores.max())
                attended[h * head_size:(h + 1) * head_size] = (weights / weights.sum()) @ values[layer, :pos + 1, kv]
            x = x + wo[layer] @ attended
            xb = rmsnorm(x, ffn_norm[layer])
            gate = w1[layer] @ xb
            x = x + w2[layer] @ (gate / (1 + np.exp(-gate)) * (w3[layer] @ xb))
        out.append(cls @ rmsnorm(x, final_norm))
    return np.array(out)


@pytest.mark.parametrize("tied", [True, False])
def test_llama2c_checkpoint_in_transformers_matches_run_c(tmp_path, tied, monkeypatch):
    import torch

    shape = dict(dim=16, hidden=24, layers=2, heads=4, kv_heads=2)
    path = tmp_path / "model.bin"
    arrays = _write_checkpoint(path, tied=tied, **shape)
    config, weights = pretrained_geometry.read_llama2c(str(path))
    assert config == dict(shape, vocab=40, seq_len=32, tied=tied)
    model = pretrained_geometry.to_transformers(config, weights)
    tokens = [1, 7, 30, 2, 2, 19, 39, 5]
    with torch.no_grad():
        got = model(torch.tensor([tokens])).logits[0].double().numpy()
    want = _run_c_logits(arrays, tokens, tied=tied, **shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # without the rows' permutation the rotary pairs differ: position 0 (no rotation) agrees, the rest do not
    monkeypatch.setattr(pretrained_geometry, "_halves_first", lambda w, heads: w)
    with torch.no_grad():
        wrong = pretrained_geometry.to_transformers(config, weights)(torch.tensor([tokens])).logits[0].numpy()
    np.testing.assert_allclose(wrong[0], want[0], rtol=1e-4, atol=1e-4)
    assert np.abs(wrong[1:] - want[1:]).max() > 1e-2


def test_read_llama2c_names_the_file_when_the_sizes_disagree(tmp_path):
    path = tmp_path / "truncated.bin"
    _write_checkpoint(path)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated.bin: .* floats after the header"):
        pretrained_geometry.read_llama2c(str(path))


def test_random_router_split_counts_the_busier_side_and_its_overflow():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)) + np.r_[3.0, np.zeros(7)]  # a shared offset along feature 0
    busiest, over = random_router_split(x, capacity=30, routers=200, rng=np.random.default_rng(1))
    directions = np.random.default_rng(1).standard_normal((8, 200))
    for r in range(200):
        count = int((x @ directions[:, r] > 0).sum())
        assert busiest[r] == max(count, 40 - count) / 40
        assert over[r] == max(max(count, 40 - count) - 30, 0) / 40
    assert mean_over_rms(np.tile(x[:1], (5, 1))) == pytest.approx(1.0)
    assert mean_over_rms(np.concatenate([x, -x])) == pytest.approx(0.0, abs=1e-12)
