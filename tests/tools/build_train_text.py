"""Builds tests/tools/tokenizer_train.txt, the text the fixture tokenizers are trained on.

Sources (all on a Debian/Ubuntu machine, read in a fixed order): a few license texts from
/usr/share/common-licenses (English), the translated messages of some GNU .mo catalogs in
/usr/share/locale (Chinese, Japanese, Korean, Arabic, Hebrew, Russian, Greek, Thai, Vietnamese,
German, French, Spanish) and a block of hand-written lines (code, emoji, digits, chat markup).
The output is committed, so the tokenizers can be retrained exactly without these machine files.

Usage: .venv/bin/python tests/tools/build_train_text.py
"""
import gettext
from pathlib import Path

OUT = Path(__file__).resolve().parent / "tokenizer_train.txt"
LICENSES = ["Apache-2.0", "BSD", "GPL-3", "MPL-2.0", "CC0-1.0"]
LOCALES = ["zh_CN", "zh_TW", "ja", "ko", "ar", "he", "ru", "el", "th", "vi", "de", "fr", "es"]
DOMAINS = ["coreutils", "apt", "grep", "sed", "wget", "dpkg", "diffutils"]
CHARS_PER_LOCALE = 12000

HANDWRITTEN = """\
def add(a, b):
    return a + b  # 1234567890
for (int i = 0; i < n; ++i) { total += values[i] * 2; }
if (x != nullptr && y >= 10) { return -1; } else { return 0; }
{"name": "octet", "version": "0.1.0", "tags": ["int8", "int4"]}
https://example.com/docs/index.html?page=2&lang=en#section-3
The meeting is at 10:30 on 2024-05-17, room 1204; call +1 555 0100.
I'm sure you'll like it. She's here and they're not. We've seen what you'd do.
It's 3.14159 or about 22/7, and 1e-5 is small; 0xFF is 255.
Emoji: 😀 😂 🥲 👍 👍🏽 👋🏿 ❤️ 🔥 🍕 🚀 ✨ 🎉 👨‍👩‍👧‍👦 🧑🏻‍💻 🏳️‍🌈 🇺🇸 🇯🇵
你好，世界！今天天气很好，我们一起去公园散步吧。
机器学习模型把文本切分成词元，然后预测下一个词元。
日本語の文章を書いています。東京は大きな都市です。
한국어 문장입니다. 서울은 한국의 수도입니다.
مرحبا بالعالم. هذه جملة باللغة العربية.
שלום עולם. זה משפט בעברית.
Привет, мир! Это предложение на русском языке.
Γειά σου Κόσμε! Αυτή είναι μια ελληνική πρόταση.
नमस्ते दुनिया! यह हिन्दी में एक वाक्य है।
สวัสดีชาวโลก นี่คือประโยคภาษาไทย
Xin chào thế giới! Đây là một câu tiếng Việt.
Grüße aus München: Straße, Größe, übermäßig.
C'est déjà l'été; la façade naïve du café.
¿Dónde está la biblioteca? ¡Mañana será otro día!
<|im_start|>user
What is the capital of France?<|im_end|>
<|im_start|>assistant
The capital of France is Paris.<|im_end|>
Once upon a time, there was a little dog named Max. He liked to run and play in the park.
The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!
	Tabs	and  double  spaces   and trailing spaces   
∑ x² ≤ ∞, √2 ≈ 1.41421356, π ≠ 3, ½ + ¼ = ¾
"""


def license_text():
    return "\n".join((Path("/usr/share/common-licenses") / name).read_text() for name in LICENSES)


def translations(locale):
    text = []
    for domain in DOMAINS:
        mo = Path("/usr/share/locale") / locale / "LC_MESSAGES" / f"{domain}.mo"
        if not mo.exists():
            continue
        with mo.open("rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog
        for key in sorted(catalog, key=str):
            value = catalog[key]
            if key and isinstance(value, str):  # key "" is the catalog header
                text.append(value.strip())
    return "\n".join(text)[:CHARS_PER_LOCALE]


def main():
    parts = [license_text()] + [translations(locale) for locale in LOCALES] + [HANDWRITTEN * 5]
    OUT.write_text("\n".join(parts) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
