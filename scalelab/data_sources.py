"""Where every named data set comes from: the user's data folder, then a user cache, then what the package ships.

A named set NAME is looked for in this order (the first place holding its files wins):

  1. the data folder: ``$SCALELAB_DATA/NAME/`` (default: ``../shared/data`` beside the checkout)
  2. the user cache: ``$XDG_CACHE_HOME/scalelab/data/NAME/`` (default ``~/.cache/...``), where ``pull`` writes
  3. what ships with the code: the Python standard library (the ``stdlib`` corpus) and scikit-learn's bundled sets

    scalelab data list                                   # every named set: where found, size, licence
    scalelab data pull magic_gamma_telescope             # download from its original source into the cache

    from scalelab import data_sources
    folder = data_sources.locate("magic_gamma_telescope")          # a Found (tier, folder) or None
    path = data_sources.data_file("gsm8k", "test.jsonl")          # a file, or a UsageError saying how to get it

``SETS`` is the registry: description, licence and expected files of each set, and for the public sets each file's
original URL (a pinned commit of a public repository), sha256 and size, so a pulled file is the very file the
shared folder holds (each folder's SOURCE.md there says more).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sysconfig
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from scalelab.common import UsageError, progress

ENV = "SCALELAB_DATA"
GITHUB_RAW = "https://raw.githubusercontent.com"
TIERS = ("data folder", "cache", "package")


@dataclass(frozen=True)
class Remote:
    """One file of a public set: ``repo`` is ``owner/name@commit``; the URL pins that commit."""

    repo: str
    path: str
    sha256: str
    size: int

    @property
    def url(self) -> str:
        name, _, commit = self.repo.partition("@")
        return f"{GITHUB_RAW}/{name}/{commit}/{self.path}"


@dataclass(frozen=True)
class NamedSet:
    """A named data set: kind (text, chat, eval, tabular), licence, one line, and the files it consists of."""

    kind: str
    licence: str
    description: str
    files: dict[str, Remote] = field(default_factory=dict)
    shipped: str = ""  # "stdlib" or "sklearn" when the package (or a dependency) ships it: no download needed
    shipped_files: tuple[str, ...] = ()


# ----------------------------------------------------------------------------------------------- the registry

# owner/name@commit of each repository a set is read from (one pinned commit each)
CHAR_RNN = "karpathy/char-rnn@6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e"
MOE_ROUTING_BENCH = "yuninxia/moe-routing-bench@bb9bb0bd461aa77cf6ab89423b758f586a6f75d1"
SMALLGPT = "s-ajaykumar/smallGPT@b8b899265a5574abd2c19d8857039309184a357c"
ASSIGNMENT1_BASICS = "stanford-cs336/assignment1-basics@25a8a49f6460c83a30416d42348f2ef11d1dd185"
PG_11 = "GITenberg/Alice-s-Adventures-in-Wonderland_11@7f18748e114b994d5d9454d5793581bc0b9cf9d7"
PG_84 = "GITenberg/Frankenstein_84@c98a483bd1f34e7366126b81bcedd1a6faee636e"
PG_1342 = "GITenberg/Pride-and-Prejudice_1342@81db45c9c48c592f0b77f01fc59e677ad0a5634e"
PG_1661 = "GITenberg/The-Adventures-of-Sherlock-Holmes_1661@7e5dd2703fbf503c004063e96ab7c61262375e5f"
PG_2600 = "GITenberg/War-and-Peace_2600@fa22ab90f00f627e83d14acabe32d91602d2365d"
PG_2701 = "GITenberg/Moby-Dick--Or-The-Whale_2701@bdf1948e6cd00963730971e5624e764a35f238c3"
LLM_BENCHMARKER_SUITE = "FormulaMonks/llm-benchmarker-suite@5d3c8009ab8f5adab4899c34dd203cbf7afcb372"
FASTCHAT = "lm-sys/FastChat@04a1074d71ea66467d5fee6f1dde344efc012218"
LLM_FOUNDRY = "mosaicml/llm-foundry@8c8dd48f72168c5d51e2f7b151595892a8fba43d"
OPEN_ASSISTANT = "LAION-AI/Open-Assistant@f1e6ed9526f5817531f3ab85441a40b3671ddccb"
FASTCHAT_2 = "lm-sys/FastChat@0e6d3e4beaab66f4d3f93db72541a4abab8af28d"
SELF_INSTRUCT = "yizhongw/self-instruct@0b26ccaa415992100fa32df62d41b994cf928e23"
GRADE_SCHOOL_MATH = "openai/grade-school-math@3101c7d5072418e28b9008a6636bde82a006892c"
HUMAN_EVAL = "openai/human-eval@6d43fb980f9fee3c892a914eda09951f772ad10d"
HELLASWAG_TEXT_DATA = "klosax/hellaswag_text_data@1105d370f8340eac3c63a91fd1fa58e8999f9505"
BOOSTING = "j2kun/boosting@342ad93fd0d898761f309b4c1986405c9e79b41c"
MLOPS_LABS = "marsbroshok/mlops-labs@7b4fd4569d326cf741cbab94a434a2fbfd3b9bce"
MOW_14Z = "kgolofit/MOW-14Z@80add3ecd1f51d79431252c97f71c043648cd15b"
MAGICTELESCOPE = "JTRLearner/MAGICtelescope@aea677caec42dba8802fa45f74b44ffff3d2a257"
MNIST = "kelas/mnist@283b387221ab46655e600cfcc25d843bb14292b9"

SETS: dict[str, NamedSet] = {
    "tiny_shakespeare": NamedSet("text", "Public domain text",
        "Shakespeare's plays concatenated, the classic character-level corpus", {
        "input.txt": Remote(CHAR_RNN, "data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1_115_394),
    }),
    "tinystories_sample": NamedSet("text", "CDLA-Sharing-1.0", "three small slices of TinyStories", {
        "tinystories_valid_head.txt": Remote(MOE_ROUTING_BENCH, "data/tinystories_val.txt",
            "5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6", 794_375),
        "tinystories_train_head.txt": Remote(SMALLGPT, "data/tiny_stories.txt",
            "c56cfd24fb1c542b141a396184b822a4db3672abdb4c49c6aa843171c5e822a5", 944_426),
        "tinystories_sample_eot.txt": Remote(ASSIGNMENT1_BASICS, "tests/fixtures/tinystories_sample.txt",
            "defaedb58bf28079f3e29c6142cb7f3568d331a577e0911c5d7925c465c50c43", 3_794),
    }),
    "gutenberg_books": NamedSet("text", "Public domain (US) + PG license",
        "six Project Gutenberg novels (Alice, Frankenstein, Pride and Prejudice, Holmes, ...)", {
        "pg11_alice_in_wonderland.txt": Remote(PG_11, "11-0.txt",
            "49a0b2726606e1290ac03a63978fa1dd1bd38a8d805704d98265f393533ea094", 173_595),
        "pg84_frankenstein.txt": Remote(PG_84, "84-0.txt",
            "c29a4f56dd91aa894a3f17d5f96b356ccb499e3e2c5a27964de911845e39efab", 450_783),
        "pg1342_pride_and_prejudice.txt": Remote(PG_1342, "1342-0.txt",
            "48e0522844402a86a3ea98f0947ba85ea54838db3c59022299298ed968a5a163", 724_725),
        "pg1661_adventures_of_sherlock_holmes.txt": Remote(PG_1661, "1661.txt",
            "2a0ce5568625a304f54fbb6bfdeeadf527a1437254b5f0e06b5a9e233d4784a2", 594_941),
        "pg2600_war_and_peace.txt": Remote(PG_2600, "2600-0.txt",
            "6cbcc5ca5e590fb9ace161a5b93e4ecf280d7118104be0d63b686c004cfa70ae", 3_359_542),
        "pg2701_moby_dick.txt": Remote(PG_2701, "2701-0.txt",
            "baf9b04fcf6e0008f30eaaa6697277751448c1070b20175e0082f28cbb161fd3", 1_276_201),
    }),
    "mbpp": NamedSet("text", "CC BY 4.0", "974 entry-level Python tasks with a reference solution and 3 asserts each", {
        "mbpp.jsonl": Remote(LLM_BENCHMARKER_SUITE, "data/mbpp/mbpp.jsonl",
            "0b5e07b5b40fedd01c57b7c9177b79f8b2eebd72c304c928605d91a7237d2f33", 563_742),
    }),
    "alpaca_cleaned_1000": NamedSet("chat", "CC BY-NC 4.0 (non-commercial)",
        "1,000 instruction/input/output records from the cleaned Stanford Alpaca data", {
        "alpaca_data_cleaned_1000.json": Remote(FASTCHAT, "data/alpaca_data_cleaned_1000.json",
            "858a146c0a95e8893d2584010ef8958638aab7442d3f96e1dc07bef285806320", 814_436),
    }),
    "dolly_hhrlhf_small": NamedSet("chat", "CC BY-SA 3.0 (+ MIT part)", "1,000 prompt/response pairs", {
        "dolly_hhrlhf_train_small.jsonl": Remote(LLM_FOUNDRY, "scripts/data_prep/dolly_hhrlhf_train_small.jsonl",
            "8d2def6bcae096798cbff5c69fb5817599f80d0dab8548bd76b61c3faeb159d8", 940_232),
    }),
    "oasst_en_100_trees": NamedSet("chat", "Apache-2.0", "100 complete OpenAssistant message trees", {
        "en_100_tree.jsonl": Remote(OPEN_ASSISTANT, "model/model_eval/manual/data/en_100_tree.jsonl",
            "a27639214a5098bf9e1cc62a855c85c630b64ab48ee94655e7f6046438b0aedb", 979_838),
    }),
    "fastchat_dummy_conversation": NamedSet("chat", "Apache-2.0", "500 short multi-turn 'identity' conversations", {
        "dummy_conversation.json": Remote(FASTCHAT_2, "data/dummy_conversation.json",
            "534c5a1079f2eb61ff96633330ce87c4743f5b6d5b1691b44a65920473540470", 234_166),
    }),
    "self_instruct": NamedSet("chat", "Apache-2.0 (responses: OpenAI outputs)", "175 human-written seed tasks", {
        "seed_tasks.jsonl": Remote(SELF_INSTRUCT, "data/seed_tasks.jsonl",
            "7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48", 110_934),
        "user_oriented_instructions.jsonl": Remote(SELF_INSTRUCT, "human_eval/user_oriented_instructions.jsonl",
            "81d60a117db495cecedecd9193504fd07c5b5a42f6699ef6b0f9da10fc22f42e", 170_193),
        "text-davinci-003_predictions.jsonl": Remote(SELF_INSTRUCT,
            "human_eval/predictions/text-davinci-003_predictions.jsonl",
            "9fbf9229c917f2c832399e4d474f0ed1a4f367fae61e5eee814f3db687e0d584", 310_102),
    }),
    "mt_bench": NamedSet("chat", "Apache-2.0 (ref. answers: GPT-4 outputs)", "80 two-turn MT-Bench questions", {
        "mt_bench_question.jsonl": Remote(FASTCHAT_2, "fastchat/llm_judge/data/mt_bench/question.jsonl",
            "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7", 48_929),
        "mt_bench_reference_answer_gpt-4.jsonl": Remote(FASTCHAT_2,
            "fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl",
            "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f", 51_109),
        "vicuna_bench_question.jsonl": Remote(FASTCHAT_2, "fastchat/llm_judge/data/vicuna_bench/question.jsonl",
            "c248c5c98ba45bb0c2aadae2f270e643bd32679c6c306a3b2a503ac4254cdaa5", 13_125),
    }),
    "gsm8k": NamedSet("eval", "MIT", "grade-school math word problems with step-by-step solutions", {
        "test.jsonl": Remote(GRADE_SCHOOL_MATH, "grade_school_math/data/test.jsonl",
            "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749_738),
        "train.jsonl": Remote(GRADE_SCHOOL_MATH, "grade_school_math/data/train.jsonl",
            "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 4_166_206),
    }),
    "humaneval": NamedSet("eval", "MIT", "164 hand-written Python problems with unit tests", {
        "HumanEval.jsonl.gz": Remote(HUMAN_EVAL, "data/HumanEval.jsonl.gz",
            "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef", 44_877),
    }),
    "hellaswag": NamedSet("eval", "MIT", "all 10,042 HellaSwag validation tasks", {
        "hellaswag_val_full.txt.bz2": Remote(HELLASWAG_TEXT_DATA, "hellaswag_val_full.txt.bz2",
            "50b637899e4263c2bc456c2dc726c95d2c8cd8e2a552ea5bd7719ce3cb03fe5b", 1_964_544),
    }),
    "arc": NamedSet("eval", "CC BY-SA 4.0", "Grade-school science multiple-choice questions", {
        "arc_easy_test.jsonl": Remote(LLM_FOUNDRY, "scripts/eval/local_data/world_knowledge/arc_easy.jsonl",
            "d2d12e59543acf9a5ef6079634a72b30215e36c2fd4236fff3bc855d287b87f5", 636_665),
        "arc_challenge_test.jsonl": Remote(LLM_FOUNDRY, "scripts/eval/local_data/world_knowledge/arc_challenge.jsonl",
            "1ae3aeedf1951d881cbd5c2e3a31e78a1993d251479afbe4cb413b6707244636", 365_606),
    }),
    "piqa": NamedSet("eval", "AFL-3.0", "1,838 physical-commonsense two-choice questions", {
        "piqa_validation.jsonl": Remote(LLM_FOUNDRY, "scripts/eval/local_data/commonsense_reasoning/piqa.jsonl",
            "d2870e73aec5154df3faf259b7700876e11608eebdf69e9d6667435673dbe4e0", 533_992),
    }),
    "winogrande": NamedSet("eval", "CC BY", "1,267 WinoGrande", {
        "winogrande_dev.jsonl": Remote(LLM_FOUNDRY, "scripts/eval/local_data/language_understanding/winogrande.jsonl",
            "ea1592526f3bfdd0948ed3acb1b4dfa3f83d23698917118688ee1df7f8d4b8d7", 312_369),
    }),
    "winograd_wsc": NamedSet("eval", "CC BY 4.0", "273 Winograd schemas as partial-evaluation pairs", {
        "wsc273.jsonl": Remote(LLM_FOUNDRY, "scripts/eval/local_data/language_understanding/winograd_wsc.jsonl",
            "746336c27cd2e39a554cb1b8b4869d0f1ae2577ac5bfe799842d26bca5a5bf5e", 60_523),
    }),
    "boolq": NamedSet("eval", "CC BY-SA 3.0", "3,270 yes/no questions about Wikipedia passages", {
        "boolq_dev.jsonl": Remote(LLM_FOUNDRY, "scripts/eval/local_data/reading_comprehension/boolq.jsonl",
            "454ff101e614370bb1807fe7ebbda6fdb57e794b9662cc1ccae211bf1ff626c8", 2_210_395),
    }),
    "copa": NamedSet("eval", "BSD-2-Clause", "100 Choice-Of-Plausible-Alternatives cause/effect questions", {
        "copa.jsonl": Remote(LLM_FOUNDRY, "scripts/eval/local_data/commonsense_reasoning/copa.jsonl",
            "595dca44dec54c849490bd403a3e24a29e3b944065783222ebb0eb1a55298846", 14_627),
    }),
    "openbookqa": NamedSet("eval", "Apache-2.0", "500 four-choice elementary science questions", {
        "openbookqa_test.jsonl": Remote(LLM_FOUNDRY, "scripts/eval/local_data/commonsense_reasoning/openbook_qa.jsonl",
            "adb2e5c7f8db810ddad4d6b2bf53dcc86dcc545499f7aafcaf42a8e179476c09", 88_043),
    }),
    "commonsense_qa": NamedSet("eval", "MIT", "1,221 five-choice commonsense questions", {
        "commonsense_qa_dev.jsonl": Remote(LLM_FOUNDRY,
            "scripts/eval/local_data/commonsense_reasoning/commonsense_qa.jsonl",
            "2771f63f8127c0725b1f6b0ef2cd2ef6469168ae5875fc8d276b25b4f32c8c1a", 258_861),
    }),
    "lambada_openai": NamedSet("eval", "CC BY 4.0", "5,153 book passages whose last word must be predicted", {
        "lambada_openai_test.jsonl": Remote(LLM_FOUNDRY,
            "scripts/eval/local_data/language_understanding/lambada_openai.jsonl",
            "411bfbe5b9054346b6a19299c0242670adbefb9162efd958593cbc0290b8c9dc", 1_895_241),
    }),
    "svamp": NamedSet("eval", "MIT", "300 simple arithmetic word problems with numeric answers", {
        "svamp_300.jsonl": Remote(LLM_FOUNDRY, "scripts/eval/local_data/symbolic_problem_solving/svamp.jsonl",
            "6e9d75302c2663a8c8ce48927d784244480bc75cd0eda539677b6a92a2ff5b97", 70_844),
    }),
    "simple_arithmetic": NamedSet("eval", "Apache-2.0",
        "1,000 expressions with up to 3 operations on numbers up to 3 digits", {
        "simple_arithmetic_nospaces.jsonl": Remote(LLM_FOUNDRY,
            "scripts/eval/local_data/symbolic_problem_solving/simple_arithmetic_nospaces.jsonl",
            "2b68696de9e381e9bddbd0af21dfd745400903b0ca5abf1b500143315b443228", 51_711),
        "simple_arithmetic_withspaces.jsonl": Remote(LLM_FOUNDRY,
            "scripts/eval/local_data/symbolic_problem_solving/simple_arithmetic_withspaces.jsonl",
            "eb95a1440f1824c36beb3449e74a2a98c5907aa916eefa0170351454f5f6d92b", 58_091),
        "bigbench_simple_arithmetic.jsonl": Remote(LLM_FOUNDRY,
            "scripts/eval/local_data/symbolic_problem_solving/bigbench_simple_arithmetic.jsonl",
            "8f5be26b313bd1dd53a4c09199a02df840256361e0ec2b9a616206a0d2fe11c9", 3_010),
    }),
    "triviaqa_small": NamedSet("eval", "Apache-2.0", "3,000 TriviaQA questions with answer and alias lists", {
        "triviaqa_3000.jsonl": Remote(LLM_FOUNDRY, "scripts/eval/local_data/world_knowledge/triviaqa_sm_sub.jsonl",
            "e3e8222e94cae291d7ab132e59f09c4f51580ed3e23639cf29c2926b4c8284e9", 1_263_021),
    }),
    "uci_adult": NamedSet("tabular", "CC BY 4.0", "predict whether income exceeds $50K/yr from 14 census attributes", {
        "adult.data": Remote(BOOSTING, "data/adult.train",
            "df25a4e32ed6f1bd4b3910d21a7bd661a09061eced7cb45555a519d9667cc87b", 3_974_304),
        "adult.test": Remote(BOOSTING, "data/adult.test",
            "5c8e678e04c82a07182bbcb6667c9a06faaba123a55b409af7c5d21fb45784b3", 2_003_131),
    }),
    "covertype_75k": NamedSet("tabular", "CC BY 4.0", "forest cover type", {
        "covertype_evaluation_75k.csv": Remote(MLOPS_LABS, "datasets/covertype/covertype_evaluation.csv",
            "6d0d35ad5bbce9a9c3abe412a3c800cb331d10a51cde15ecdd7c81d94ba754fc", 4_134_368),
    }),
    "uci_letter_recognition": NamedSet("tabular", "CC BY 4.0",
        "one of 26 capital letters from 16 integer features of character images", {
        "letter-recognition.data": Remote(MOW_14Z, "letter-recognition.data",
            "2b89f3602cf768d3c8355267d2f13f2417809e101fc2b5ceee10db19a60de6e2", 712_565),
    }),
    "uci_pendigits": NamedSet("tabular", "CC BY 4.0", "digits 0-9 from 16 resampled pen-trajectory coordinates", {
        "pendigits.tra": Remote(MOW_14Z, "pendigits.tra",
            "7eb6fff2665cb86bfb35d87ee82d93e2a42a871ec7808b7453e6f830e7a26355", 502_168),
        "pendigits.tes": Remote(MOW_14Z, "pendigits.tes",
            "46d37ac29b069194d688403fe803fe45c2e214851ddc0998e53d67392706ffd4", 234_436),
    }),
    "uci_poker_hand": NamedSet("tabular", "CC BY 4.0",
        "classify 5-card poker hands into 10 classes from suit/rank of each card", {
        "poker-hand-training-true.data": Remote(MOW_14Z, "poker-hand-training-true.data",
            "865e3ddab86a461d6d556ae339ca0c13b602d8be9088281abe8b2accd75a9f69", 588_684),
    }),
    "magic_gamma_telescope": NamedSet("tabular", "CC BY 4.0", "separate gamma", {
        "magic04.csv": Remote(MAGICTELESCOPE, "magic04.csv",
            "6a72ea9a9e573db41e34004414c40b75409c90659059f41b0f384b7deeb90fe2", 1_496_488),
        "magic04.names": Remote(MAGICTELESCOPE, "magic04.names",
            "1033f275dfb89a63482aed898147ce1b88a717146b895623f2c13dc229727e16", 6_286),
    }),
    "mnist_test": NamedSet("tabular", "CC BY-SA 3.0", "the 10,000-image MNIST test set", {
        "t10k-images-idx3-ubyte.gz": Remote(MNIST, "t10k-images-idx3-ubyte.gz",
            "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b", 1_648_877),
        "t10k-labels-idx1-ubyte.gz": Remote(MNIST, "t10k-labels-idx1-ubyte.gz",
            "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c", 4_542),
    }),
    # shipped with the code: always present
    "stdlib": NamedSet("text", "PSF License (Python's own source)",
                       "the running Python's standard library (.py files and pydoc topics): the default corpus",
                       shipped="stdlib"),
    "digits": NamedSet("tabular", "CC BY 4.0 (UCI), bundled by scikit-learn (BSD-3-Clause)",
                       "1,797 8x8 images of handwritten digits", shipped="sklearn", shipped_files=("digits.csv.gz",)),
    "breast_cancer": NamedSet("tabular", "CC BY 4.0 (UCI), bundled by scikit-learn (BSD-3-Clause)",
                              "569 breast-mass biopsies, benign or malignant, from 30 features",
                              shipped="sklearn", shipped_files=("breast_cancer.csv",)),
    "wine": NamedSet("tabular", "CC BY 4.0 (UCI), bundled by scikit-learn (BSD-3-Clause)",
                     "178 wines from three cultivars, 13 chemical features", shipped="sklearn",
                     shipped_files=("wine_data.csv",)),
    "iris": NamedSet("tabular", "CC BY 4.0 (UCI), bundled by scikit-learn (BSD-3-Clause)",
                     "150 iris flowers, three species, 4 measurements", shipped="sklearn", shipped_files=("iris.csv",)),
    "diabetes": NamedSet("tabular", "bundled by scikit-learn (BSD-3-Clause); Efron et al. 2004",
                         "442 patients, 10 baseline variables, disease progression after one year (regression)",
                         shipped="sklearn", shipped_files=("diabetes_data_raw.csv.gz", "diabetes_target.csv.gz")),
}


# ----------------------------------------------------------------------------------------------- where to look

def data_dir() -> Path:
    """The user's data folder: ``$SCALELAB_DATA``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def cache_dir() -> Path:
    """Where ``pull`` writes: ``$XDG_CACHE_HOME/scalelab/data`` (``~/.cache/scalelab/data`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "scalelab" / "data"


def shipped_dir(name: str) -> Path | None:
    """The folder the package (or scikit-learn) ships set ``name`` in, or None."""
    kind = get(name).shipped
    if kind == "stdlib":
        return Path(sysconfig.get_paths()["stdlib"])
    if kind == "sklearn":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "data"
    return None


def get(name: str) -> NamedSet:
    """The registry entry, or a UsageError listing the known names."""
    if name not in SETS:
        raise UsageError(f"unknown data set '{name}' (known: {', '.join(SETS)}; `scalelab data list` shows them)")
    return SETS[name]


@dataclass(frozen=True)
class Found:
    """Where a set was found: ``tier`` is one of TIERS, ``path`` its folder."""

    name: str
    tier: str
    path: Path

    def describe(self) -> str:
        return f"{self.name} ({self.tier}: {self.path})"


def _candidates(name: str) -> list[tuple[str, Path]]:
    out = [("data folder", data_dir() / name), ("cache", cache_dir() / name)]
    shipped = shipped_dir(name)
    if shipped is not None:
        out.append(("package", shipped))
    return out


def _expected(name: str) -> tuple[str, ...]:
    ds = get(name)
    return tuple(ds.files) or ds.shipped_files


def locate(name: str) -> Found | None:
    """The first place that holds every file of set ``name`` (see the module docstring), or None."""
    for tier, folder in _candidates(name):
        if folder.is_dir() and all((folder / f).is_file() for f in _expected(name)):
            return Found(name, tier, folder)
    return None


def how_to_get(name: str) -> str:
    """A clause for error messages: where the set was looked for and the command that fetches it."""
    where = f"looked in {data_dir() / name} (${ENV}) and {cache_dir() / name}"
    return f"{where}; `scalelab data pull {name}` downloads it" if get(name).files else where


def require(name: str) -> Found:
    """Like ``locate``, but a UsageError naming where it looked and how to get the set."""
    found = locate(name)
    if found is None:
        raise UsageError(f"data set '{name}' not found ({how_to_get(name)})")
    return found


def data_file(name: str, relpath: str, folder: str | Path | None = None) -> Path:
    """File ``relpath`` of set ``name``: from ``folder``/NAME when given (an explicit data folder), else the first
    tier that has it; a UsageError naming where it looked otherwise."""
    if folder is not None:
        path = Path(folder) / name / relpath
        if not path.is_file():
            raise UsageError(f"{path}: data file not found")
        return path
    for _, base in _candidates(name):
        if (base / relpath).is_file():
            return base / relpath
    raise UsageError(f"{name}/{relpath}: data file not found ({how_to_get(name)})")


def size_bytes(name: str, found: Found | None = None) -> int:
    """Bytes of the set's expected files where it was found (the registry's sizes when absent); 0 if unknown."""
    found = found or locate(name)
    if found is not None:
        return sum((found.path / f).stat().st_size for f in _expected(name))
    return sum(r.size for r in get(name).files.values())


# ----------------------------------------------------------------------------------------------- pull

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, remote: Remote, timeout_s: float) -> None:
    """Stream ``url`` into ``dest`` (a temp file), checking size and sha256; UsageError on any failure."""
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp, dest.open("wb") as fh, \
                progress(total=remote.size, unit="B", unit_scale=True, desc=dest.name.split(".part")[0],
                         leave=False) as bar:
            for chunk in iter(lambda: resp.read(1 << 16), b""):
                fh.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
            fh.flush()
            os.fsync(fh.fileno())
    except urllib.error.HTTPError as e:
        raise UsageError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UsageError(f"cannot reach {url.split('/')[2]} (offline? {reason}): copy the files into "
                         f"{data_dir()} instead, or pull again when online") from None
    got = dest.stat().st_size
    if got != remote.size or h.hexdigest() != remote.sha256:
        raise UsageError(f"{url}: checksum mismatch (got {got:,} bytes, sha256 {h.hexdigest()[:16]}..., expected "
                         f"{remote.size:,} bytes, {remote.sha256[:16]}...); nothing was kept")


def pull(name: str, mirror: str | None = None, timeout_s: float = 30.0) -> Path:
    """Download set ``name`` from its original source into the cache; returns the set's cache folder.

    Files already in the cache with the right sha256 are kept. Each file is verified (size and sha256) in a staging
    folder beside the cache and renamed into place only when the whole set is verified, so an interrupted or
    corrupted download never leaves a set that ``locate`` would take. ``mirror`` replaces ``https://raw.githubusercontent.com``
    (a proxy or a local copy with the same paths).
    """
    ds = get(name)
    if not ds.files:
        raise UsageError(f"data set '{name}' ships with the code ({ds.shipped}); there is nothing to pull")
    dest = cache_dir() / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}.", suffix=".part"))
    try:
        todo = [(f, r) for f, r in ds.files.items()
                if not ((dest / f).is_file() and (dest / f).stat().st_size == r.size and _sha256(dest / f) == r.sha256)]
        for fname, remote in todo:
            url = remote.url if not mirror else mirror.rstrip("/") + remote.url[len(GITHUB_RAW):]
            _download(url, stage / fname, remote, timeout_s)
        dest.mkdir(exist_ok=True)
        for fname, _ in todo:
            os.chmod(stage / fname, 0o644)
            os.replace(stage / fname, dest / fname)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest
