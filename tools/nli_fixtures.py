#!/usr/bin/env python3
"""Writes crates/runtime/tests/fixtures/nli/v3/: a small DeBERTa-v3 sequence classifier
with random weights, saved by transformers (config.json, model.safetensors, tokenizer.json), and
`expected.json`: premise / hypothesis pairs tokenized by transformers as the NLI scorer does
(`tokenizer(premise, hypothesis, truncation=True, max_length=512)`) with the logits of
`DebertaV2ForSequenceClassification` on them. `runtime::nli`'s tests hold edge-eval's tokens to
these exactly and its logits within a tolerance. No NLI checkpoint can be fetched here, so the
weights are random; the architecture is the one the paper's scorer
(DeBERTa-v3-large-mnli-fever-anli-ling-wanli) uses: relative attention with log buckets, c2p and
p2c terms, a shared attention key, a layer-normed relative embedding. (DeBERTa-v2-xlarge's
convolution layer is left out: candle-transformers does not implement its forward, and
`runtime::nli` refuses such configs.)

    pip install torch transformers tokenizers safetensors
    python3 tools/nli_fixtures.py
"""
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, PreTrainedTokenizerFast

root = Path(__file__).resolve().parent.parent
out = root / "crates/runtime/tests/fixtures/nli"

CORPUS = [
    "The city council approved the new budget on Tuesday after a long debate.",
    "Boston is the capital and most populous city of the Commonwealth of Massachusetts.",
    "The satellite navigation system provides positioning services across the region.",
    "Canon law is the body of laws and regulations made by ecclesiastical authority.",
    "A committee of experts reviewed the proposal and recommended several changes.",
    "Rain is expected in the north, while the south will stay dry and warm.",
    "The company reported higher profits, driven by strong sales of its new phone.",
    "Students gathered in the main hall to hear the results of the election.",
    "The museum opened a new exhibition of paintings from the nineteenth century.",
    "Engineers tested the bridge for weeks before it was opened to traffic.",
    "The answer is not in the text; the question asks about something else entirely.",
    "Über café naïve résumé — punctuation, numbers 1984 and 3.14, and symbols & more!",
]

PAIRS = [
    ("Boston is the capital of Massachusetts.", "Boston is a capital city."),
    ("The council approved the budget on Tuesday.", "The budget was rejected."),
    ("Engineers tested the bridge for weeks.", ""),
    ("Über café naïve résumé 1984 & 3.14!", "A café in 1984."),
    # A premise past 512 tokens: truncated as transformers' longest_first does.
    (" ".join(CORPUS * 12), "The museum opened a new exhibition."),
    # Both long: half each, the odd token to the longer side; on a tie to the second.
    (" ".join(CORPUS * 7), " ".join(CORPUS * 6)),
    (" ".join(CORPUS * 6), " ".join(CORPUS * 7)),
    (" ".join(CORPUS * 6), " ".join(CORPUS * 6)),
]


def tokenizer():
    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.Sequence([normalizers.NFKC()])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="[UNK]")
    tk.train_from_iterator(CORPUS * 4, trainer=trainer)
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def config(vocab):
    return DebertaV2Config(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        relative_attention=True,
        max_relative_positions=-1,
        position_buckets=16,
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        type_vocab_size=0,
        layer_norm_eps=1e-7,
        pooler_hidden_size=32,
        pooler_dropout=0.0,
        pooler_hidden_act="gelu",
        pad_token_id=0,
        num_labels=3,
        id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
        label2id={"entailment": 0, "neutral": 1, "contradiction": 2},
    )


def main():
    tok = tokenizer()
    for name, seed in [("v3", 1)]:
        torch.manual_seed(seed)
        model = DebertaV2ForSequenceClassification(config(len(tok))).eval()
        with torch.no_grad():
            # Weights far from the init's small values, so that every term moves the logits
            # (layer norms' scales around 1, the rest around 0).
            for pname, p in model.named_parameters():
                p.normal_(1.0 if "LayerNorm.weight" in pname else 0.0, 0.3)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
        for extra in ["tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]:
            (folder / extra).unlink(missing_ok=True)
        cases = []
        for premise, hypothesis in PAIRS:
            enc = tok(premise, hypothesis, truncation=True, max_length=512, return_tensors="pt")
            with torch.no_grad():
                logits = model(**enc).logits[0].tolist()
            cases.append({
                "premise": premise,
                "hypothesis": hypothesis,
                "input_ids": enc["input_ids"][0].tolist(),
                "logits": logits,
            })
        (folder / "expected.json").write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n")
        print(f"{folder}: {len(cases)} pairs, lengths {[len(c['input_ids']) for c in cases]}")


if __name__ == "__main__":
    main()
