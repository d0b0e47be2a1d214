#!/usr/bin/env python3
"""Writes byte_level_tokenizer.json: a byte-level BPE tokenizer.json (the GPT-2 pipeline) whose 256 byte tokens and a
few English merges fit the tiny models' 300-entry vocabulary, so every id it produces is a row of their embedding.
The tiny models have no tokenizer; the CLI and eval tests put this one beside a copy of a model."""
import json, os

printable = set(list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256)))
byte_to_char, nxt = [], 256
for b in range(256):      # GPT-2's map: printable bytes stand for themselves, the others get 256, 257, … in order
    if b in printable:
        byte_to_char.append(chr(b))
    else:
        byte_to_char.append(chr(nxt)); nxt += 1

vocab = {byte_to_char[b]: b for b in range(256)}
merges = []
for word in [" the", " and", " to", " of", " a", "in", "er", "on", "ed", "es", " is", "at", "or", "it"]:
    chars = [byte_to_char[b] for b in word.encode()]
    left = chars[0]
    for c in chars[1:]:
        if len(vocab) >= 300:
            break
        merges.append(left + " " + c)
        left += c
        vocab.setdefault(left, len(vocab))

byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
tokenizer = {"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": byte_level,
             "post_processor": None, "decoder": byte_level,
             "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                       "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                       "vocab": vocab, "merges": merges}}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "byte_level_tokenizer.json")
with open(path, "w", encoding="utf-8") as f:
    json.dump(tokenizer, f, ensure_ascii=False, sort_keys=True)
print(f"{path}: {len(vocab)} tokens, {len(merges)} merges")
