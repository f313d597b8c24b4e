"""Every built-in objective passes the objective contract (medssl.testing.objectives)."""

from __future__ import annotations

from medssl.builtins.objectives import CLIP, DINO, IBOT, MAE, KoLeo
from medssl.testing.objectives import ObjectiveContractTests

TINY_HEAD = {"prototypes": 32, "hidden_dim": 16, "bottleneck_dim": 8}


class TestDINOContract(ObjectiveContractTests):
    factory = DINO
    options = {**TINY_HEAD, "centering": "mean"}


class TestDINOSinkhornContract(ObjectiveContractTests):
    factory = DINO
    options = {**TINY_HEAD, "centering": "sinkhorn_knopp"}


class TestIBOTSharedHeadContract(ObjectiveContractTests):
    factory = IBOT
    options = {}
    before = ((DINO, TINY_HEAD),)


class TestIBOTOwnHeadContract(ObjectiveContractTests):
    factory = IBOT
    options = {**TINY_HEAD, "centering": "sinkhorn_knopp"}


class TestKoLeoContract(ObjectiveContractTests):
    factory = KoLeo


class TestMAEContract(ObjectiveContractTests):
    factory = MAE
    options = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}


class TestMAEGlobalViewContract(ObjectiveContractTests):
    factory = MAE
    options = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2, "view": "global"}


class TestCLIPContract(ObjectiveContractTests):
    factory = CLIP
    options = {
        "projection_dim": 8,
        "text_width": 16,
        "text_layers": 1,
        "text_heads": 2,
        "context_length": 48,
    }


class TestCLIPGlobalViewContract(ObjectiveContractTests):
    factory = CLIP
    options = {
        "projection_dim": 8,
        "text_width": 16,
        "text_layers": 1,
        "text_heads": 2,
        "context_length": 48,
        "view": "global",
    }
