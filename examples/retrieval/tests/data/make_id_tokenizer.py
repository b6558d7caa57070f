"""Writes id-tokenizer/: a word-level tokenizer that maps the words "0" … "95" to ids 0 … 95 and
any other word to 96, for the contract tests' tiny models (vocabulary 96). Run once from here:
python make_id_tokenizer.py"""

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

VOCAB = 96
folder = Path(__file__).parent / "id-tokenizer"
folder.mkdir(exist_ok=True)
tokenizer = Tokenizer(models.WordLevel({**{str(i): i for i in range(VOCAB)}, "[UNK]": VOCAB}, unk_token="[UNK]"))
tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer.save(str(folder / "tokenizer.json"))
config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}
(folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
