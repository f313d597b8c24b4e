"""Image-text contrastive pre-training (Radford et al., "Learning Transferable Visual Models
From Natural Language Supervision", 2021) on images with their report text.

Symmetric InfoNCE between L2-normalised projections of the image CLS token and of a text
encoder's output, with a learnable temperature (``logit_scale`` initialised to
``log(1 / 0.07)`` and clamped at ``log(100)`` as in CLIP). The text encoder is either a
small transformer built here over UTF-8 bytes (no tokenizer download; causal attention, the
end-of-text token's output as the text feature, as CLIP does), or a local Hugging Face
text-model folder (``text_model: path``; its first token's output).

Images: the student's CLS token of ``views.single_view`` (one more backbone forward) or,
with ``view: global`` or when the policy made no single view, of global crop 0 from the
shared forward pass. Under torch.distributed, every rank's projections are gathered (with
their gradients, as OpenCLIP's ``gather_with_grad``) so each image is contrasted with the
reports of the global batch, not only its rank's; ``gather: false`` keeps the loss local.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from typing_extensions import Self

from medssl.objectives.configured import ConfiguredObjective, check_divisible
from medssl.types import (
    LearningSignals,
    ObjectiveContext,
    ObjectiveResult,
    StepOutputs,
    ViewRequest,
)

__all__ = ["CLIP", "ByteTokenizer", "TextTransformer"]


class ByteTokenizer:
    """UTF-8 bytes as tokens (0-255) plus begin (256), end (257) and padding (258)."""

    BOS, EOS, PAD = 256, 257, 258
    vocab_size = 259

    def __init__(self, context_length: int) -> None:
        if context_length < 2:
            raise ValueError(f"ByteTokenizer: context_length must be >= 2, got {context_length}")
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids ``[N, context_length]`` and the position of each end token ``[N]``."""
        ids = torch.full((len(texts), self.context_length), self.PAD, dtype=torch.long)
        eos = torch.empty(len(texts), dtype=torch.long)
        for i, text in enumerate(texts):
            body = list(text.encode("utf-8"))[: self.context_length - 2]
            row = [self.BOS, *body, self.EOS]
            ids[i, : len(row)] = torch.tensor(row)
            eos[i] = len(row) - 1
        return ids, eos


class TextTransformer(nn.Module):
    """A small causal pre-norm transformer over byte tokens; output at the end token."""

    def __init__(self, width: int, layers: int, heads: int, context_length: int) -> None:
        super().__init__()
        self.tokenizer = ByteTokenizer(context_length)
        self.token_embedding = nn.Embedding(ByteTokenizer.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            4 * width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        self.width = width
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, texts: list[str]) -> Tensor:
        ids, eos = self.tokenizer(texts)
        device = self.token_embedding.weight.device
        ids, eos = ids.to(device), eos.to(device)
        x = self.token_embedding(ids) + self.positional_embedding
        length = ids.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=device)
        x = self.ln_final(self.transformer(x, mask=causal, is_causal=True))
        return x[torch.arange(x.shape[0], device=device), eos]


class HFTextEncoder(nn.Module):
    """A local Hugging Face text model folder (no download): its first token's output."""

    def __init__(self, path: str, context_length: int) -> None:
        super().__init__()
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"objective 'clip': text_model {path!r} is not a folder; give a local Hugging "
                "Face model folder (config.json, weights, tokenizer files) or leave text_model "
                "unset for the built-in byte-level text transformer"
            )
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        # safetensors only: a pytorch_model.bin is a pickle, and trust_remote_code stays off
        self.model = AutoModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True
        )
        self.width = int(self.model.config.hidden_size)
        self.context_length = context_length

    def forward(self, texts: list[str]) -> Tensor:
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        out = self.model(**{k: v.to(device) for k, v in batch.items()})
        return out.last_hidden_state[:, 0]


class CLIP(ConfiguredObjective):
    """Symmetric image-text InfoNCE with a learnable temperature (module docstring)."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        projection_dim: int = Field(256, ge=1, description="shared embedding size")
        text_model: str | None = Field(
            None, description="local Hugging Face text model folder; unset: byte transformer"
        )
        text_width: int = Field(256, ge=1)
        text_layers: int = Field(4, ge=1)
        text_heads: int = Field(4, ge=1)
        context_length: int = Field(256, ge=2, description="tokens per report (bytes + 2)")
        init_temperature: float = Field(0.07, gt=0)
        max_logit_scale: float = Field(100.0, gt=1)
        view: Literal["single", "global"] = Field(
            "single", description="encode a single view, or reuse global crop 0's CLS token"
        )
        gather: bool = Field(
            True, description="contrast against every rank's batch under torch.distributed"
        )

        @model_validator(mode="after")
        def _check(self) -> Self:
            if self.text_model is None:
                check_divisible(self.text_width, self.text_heads, "text_width", "text_heads")
            return self

    def setup(self, ctx: ObjectiveContext) -> None:
        super().setup(ctx)
        o = self.options
        if o.text_model is not None:
            self.text_encoder: nn.Module = HFTextEncoder(o.text_model, o.context_length)
        else:
            self.text_encoder = TextTransformer(
                o.text_width, o.text_layers, o.text_heads, o.context_length
            )
        width = int(self.text_encoder.width)  # type: ignore[arg-type]
        self.image_projection = nn.Linear(ctx.embed_dim, o.projection_dim, bias=False)
        self.text_projection = nn.Linear(width, o.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / o.init_temperature)))

    def request(self, patch_size: int) -> ViewRequest:
        single = self.options.view == "single"
        return ViewRequest(
            text=True, single_view=single, global_crops=not single, patch_size=patch_size
        )

    def _image_features(self, out: StepOutputs) -> Tensor:
        v = out.views
        if self.options.view == "single" and v.single_view is not None:
            return out.student(v.single_view).cls
        if out.student_global is not None:
            return out.student_global.cls[: v.batch_size]
        if v.single_view is not None:
            return out.student(v.single_view).cls
        raise ValueError(
            "objective 'clip': no image to encode (views.single_view and "
            "StepOutputs.student_global are both None)"
        )

    def loss(self, out: StepOutputs) -> ObjectiveResult:
        v = out.views
        if v.text is None:
            raise ValueError(
                "objective 'clip' needs report text but views.text is None: use a dataset "
                "whose samples carry 'text', or set objectives.clip.weight=0"
            )
        if len(v.text) != v.batch_size:
            raise ValueError(
                f"objective 'clip': views.text has {len(v.text)} entries for a batch of "
                f"{v.batch_size} images"
            )
        cls = self._image_features(out)
        image = self.image_projection(cls)
        text = self.text_projection(self.text_encoder(v.text))
        acc = torch.promote_types(image.dtype, torch.float32)  # fp32 at least, fp64 kept
        image, text = F.normalize(image.to(acc), dim=-1), F.normalize(text.to(acc), dim=-1)
        scale = self.logit_scale.clamp(max=math.log(self.options.max_logit_scale)).exp()
        all_image, all_text, offset = _gather_pairs(image, text, self.options.gather)
        # This rank's rows against the global batch's columns; its pairs sit at offset + i.
        # Averaged over ranks (DDP averages the gradients) this is the global batch's loss.
        labels = torch.arange(image.shape[0], device=image.device) + offset
        image_to_text = F.cross_entropy(scale * image @ all_text.T, labels)
        text_to_image = F.cross_entropy(scale * text @ all_image.T, labels)
        loss = 0.5 * (image_to_text + text_to_image)
        signals = None
        if out.diagnose:
            # Uniform logits score ln(columns) in both directions: the chance level. Only
            # a CLS token of CLIP's own forward is a backbone output StepOutputs lacks.
            own = self.options.view == "single" and v.single_view is not None
            shared = not own and out.student_global is not None
            signals = LearningSignals(
                chance=math.log(all_text.shape[0]),
                backbone_tokens=() if shared else (cls,),
                hint="objectives.clip.init_temperature, objectives.clip.projection_dim, "
                "train.batch_size (more negatives), train.lr",
            )
        return ObjectiveResult(
            loss=loss, metrics={"logit_scale": float(scale.detach())}, signals=signals
        )


def _gather_pairs(image: Tensor, text: Tensor, enabled: bool) -> tuple[Tensor, Tensor, int]:
    """Every rank's image and text projections, concatenated in rank order (gradients flow
    back to each rank's own rows), and this rank's first row in them; outside
    torch.distributed (or with ``enabled`` false) the local ones and 0."""
    if not (enabled and dist.is_available() and dist.is_initialized()):
        return image, text, 0
    world = dist.get_world_size()
    if world == 1:
        return image, text, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=image.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([image.shape[0]], device=image.device))
    if len({int(n) for n in sizes}) != 1:
        raise ValueError(
            "objective 'clip': gathering across ranks needs the same batch on every rank, got "
            f"{[int(n) for n in sizes]} (drop the last incomplete batch, or set "
            "objectives.clip.gather=false)"
        )
    from torch.distributed.nn.functional import all_gather

    offset = dist.get_rank() * image.shape[0]
    return torch.cat(all_gather(image)), torch.cat(all_gather(text)), offset
