"""Store artifacts that outlive a session: a long benchmark's finished artifacts of some stages (the audit's
divergence maps and reads, say) copied into a committed folder, and copied back into a later session's store, where
the store checks each one (its stage, key and every file's digest, against its manifest) before it is used. The
manifests keep their build provenance (when, on what machine, with which versions).

    python benchmarks/benchlib/carried.py carry RUNS_DIR DEST --stages divergence,reads   # while a benchmark runs
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from sublim.core.store import MANIFEST, Store, read_manifest


def carry(store: Store, stages: list[str], dest: Path) -> list[str]:
    """Copy every finished artifact of ``stages`` in ``store`` not yet in ``dest`` there; their folder names."""
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for path in sorted((store.root / "store").glob("*-*")):
        if not (path / MANIFEST).is_file() or (dest / path.name).exists():
            continue
        manifest = read_manifest(path)
        if manifest["stage"] not in stages or store.get(manifest["stage"], manifest["key"]) is None:
            continue
        shutil.copytree(path, dest / path.name)
        done.append(path.name)
    return done


def restore(src: Path, store: Store) -> list[str]:
    """Copy every carried artifact in ``src`` the store lacks into it, each verified by the store; their names."""
    done = []
    for path in sorted(src.glob("*-*")) if src.is_dir() else []:
        manifest = read_manifest(path)
        target = store.path(manifest["stage"], manifest["key"])
        if target.name != path.name:
            raise SystemExit(f"{path}: its manifest names another artifact ({target.name}); restore it with git "
                             "checkout")
        if (target / MANIFEST).is_file():
            continue
        if target.exists():  # an unfinished build of the same artifact: the carried one is finished
            shutil.rmtree(target)
        shutil.copytree(path, target)
        store.get(manifest["stage"], manifest["key"])  # raises, naming the file, if a carried file was changed
        done.append(path.name)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["carry", "restore"])
    ap.add_argument("runs_dir", type=Path)
    ap.add_argument("folder", type=Path, help="the committed folder of carried artifacts")
    ap.add_argument("--stages", default="divergence,reads", help="comma-separated stages to carry")
    args = ap.parse_args()
    store = Store(args.runs_dir)
    got = carry(store, args.stages.split(","), args.folder) if args.action == "carry" else \
        restore(args.folder, store)
    print(f"{args.action}: {len(got)} artifact(s){': ' + ', '.join(got) if got else ''}")


if __name__ == "__main__":
    main()
