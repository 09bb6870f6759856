"""Human evaluation packets (paper Appendix B), the CLI: export blinded annotation pages, import the ratings.

    python -m reporting.annotate export --runs=runs/ --out=human/ [--n_items=30] [--langs=en,fr,pt,ru]
        [--select=chosen|all] [--lr_metrics=lang_correct,spell_ok_rate] [--anchor=RUN] [--seed=0]
    python -m reporting.annotate import --key=human/key.json --ratings=a.json,b.json --out=human/ratings.parquet
        [--runs=runs/]   # also prints human/judge agreement (weighted kappa) when the runs have scores

What the packet holds and how ratings are validated: reporting/human.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

from evalsuite.data import LANGS
from records.cli import expected_errors
from records.errors import InputError
from records.files import atomic_write_parquet
from reporting.human import export_packet, import_ratings, judge_scores, load_key, summarize

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", None, "export: runs directory (docs/results.md); import: optional, for kappa.")
flags.DEFINE_string("out", None, "export: output folder; import: output Parquet file.")
flags.DEFINE_integer("n_items", 30, "export: task-balanced instructions rated for every model, per language.")
flags.DEFINE_list("langs", list(LANGS), "export: languages (one page each).")
flags.DEFINE_enum("select", "chosen", ["chosen", "all"], "export: chosen LR per group, or every run.")
flags.DEFINE_list(
    "lr_metrics",
    None,
    "export: surface metrics of the LR choice (default: lang_correct, spell_ok_rate, relevance, each "
    "needed for every LR), e.g. lang_correct,spell_ok_rate when no relevance model was run.",
)
flags.DEFINE_string("anchor", None, "export: anchor run (default: the selected run with anchor: true).")
flags.DEFINE_integer("seed", 0, "export: seed of the item choice and of the shuffling.")
flags.DEFINE_string("guidelines", None, "export: guidelines text (default: data/human/guidelines.txt).")
flags.DEFINE_string("key", None, "import: key.json written by export.")
flags.DEFINE_list("ratings", None, "import: ratings JSON files exported from the annotation pages.")


USAGE = "usage: python -m reporting.annotate export --runs=DIR --out=DIR | import --key=KEY --ratings=F[,F] --out=FILE"


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in ("export", "import"):
        print(f"{USAGE}\n(got {argv[1:]}; --helpfull lists the flags)", file=sys.stderr)
        sys.exit(2)
    try:
        if argv[1] == "export":
            if not FLAGS.runs or not FLAGS.out:
                raise ValueError("export needs --runs and --out")
            key = export_packet(
                FLAGS.runs,
                FLAGS.out,
                FLAGS.n_items,
                FLAGS.langs,
                FLAGS.select,
                FLAGS.anchor,
                FLAGS.seed,
                FLAGS.guidelines,
                log=lambda m: print(m, file=sys.stderr),
                lr_metrics=FLAGS.lr_metrics,
            )
            out = Path(FLAGS.out)
            print(
                f"packet {key['packet']}: {len(key['runs'])} models ({', '.join(key['runs'])}), "
                f"anchor {key['anchor']}, {len(key['items'])} items"
            )
            for lang in key["langs"]:
                print(f"  {lang}: {key['counts'][lang]} responses -> {out / key['pages'][lang]}")
            print(f"key (keep away from annotators): {out / 'key.json'}")
        else:
            if not FLAGS.key or not FLAGS.ratings or not FLAGS.out:
                raise ValueError("import needs --key, --ratings and --out")
            key = load_key(FLAGS.key)
            table = import_ratings(FLAGS.key, FLAGS.ratings)
            atomic_write_parquet(table, FLAGS.out)
            scores = judge_scores(FLAGS.runs, key.get("runs", {})) if FLAGS.runs else None
            print(summarize(table, key, scores))
            print(f"wrote {FLAGS.out}")
    except ValueError as e:  # a missing flag combination: an expected failure too
        raise (e if isinstance(e, InputError) else InputError(str(e))) from None


if __name__ == "__main__":
    app.run(expected_errors(main))
