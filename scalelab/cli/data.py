"""`scalelab data`: the named data sets, where each is found, and downloading the public ones into the cache.

    scalelab data list                                # every set: present or not, where, size, licence
    scalelab data list gsm8k mbpp                     # only these
    scalelab data path magic_gamma_telescope          # the folder it is read from (exit 2 when absent)
    scalelab data pull magic_gamma_telescope          # download from its original source into the cache
    scalelab data pull gsm8k --mirror http://host:8000   # the same paths under another base URL

Where sets are looked for (data folder $SCALELAB_DATA, cache, package) is in scalelab/data_sources.py.
"""

from __future__ import annotations

from scalelab import data_sources as ds
from scalelab.common import print0
from scalelab.config import ArgumentParser


def human(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def list_rows(names: list[str]) -> list[dict[str, str]]:
    """One row per set: name, kind, present, where (tier and folder), size, licence."""
    rows = []
    for name in names:
        entry = ds.get(name)
        found = ds.locate(name)
        if name == "stdlib" and found is not None:
            from scalelab.lm.data.corpus import stdlib_python_files

            size = human(sum(p.stat().st_size for p in stdlib_python_files()))
        else:
            size = human(ds.size_bytes(name, found))
        rows.append({"name": name, "kind": entry.kind, "present": "yes" if found else "no",
                     "where": f"{found.tier}: {found.path}" if found else "(pull it)" if entry.files else "-",
                     "size": size if found else f"({size})", "licence": entry.licence})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="scalelab data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True, metavar="{list,path,pull}")
    p_list = sub.add_parser("list", help="every named set: present or not, where, size, licence")
    p_list.add_argument("names", nargs="*", metavar="NAME", help="only these sets (default: all)")
    p_path = sub.add_parser("path", help="print the folder a set is read from")
    p_path.add_argument("name", metavar="NAME")
    p_pull = sub.add_parser("pull", help="download a public set from its original source into the cache")
    p_pull.add_argument("name", metavar="NAME")
    p_pull.add_argument("--mirror", default=None, metavar="URL",
                        help=f"base URL that replaces {ds.GITHUB_RAW} (same paths below it)")
    p_pull.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server (default 30)")
    args = parser.parse_args(argv)

    if args.action == "list":
        names = args.names or list(ds.SETS)
        for name in names:
            ds.get(name)  # an unknown name is a UsageError before any output
        rows = list_rows(names)
        cols = ["name", "kind", "present", "size", "licence", "where"]
        width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
        print0("  ".join(c.ljust(width[c]) for c in cols[:-1]) + "  where")
        for r in rows:
            print0("  ".join(r[c].ljust(width[c]) for c in cols[:-1]) + "  " + r["where"])
        n_present = sum(r["present"] == "yes" for r in rows)
        print0(f"\n{n_present} of {len(rows)} present. Looked in: data folder {ds.data_dir()} (${ds.ENV}), "
               f"cache {ds.cache_dir()}, then the package. Missing public sets: `scalelab data pull NAME`.")
    elif args.action == "path":
        print0(ds.require(args.name).path)
    else:
        found = ds.locate(args.name)
        if found is not None and found.tier != "cache":
            print0(f"{args.name}: already present ({found.tier}: {found.path}); pulling a copy into the cache anyway")
        folder = ds.pull(args.name, mirror=args.mirror, timeout_s=args.timeout)
        print0(f"{args.name}: {len(ds.get(args.name).files)} files verified (sha256) in {folder}")
    return 0
