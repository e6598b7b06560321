#!/usr/bin/env bash
# Lay out the freely licensed photographs of tools/photos.tsv as data/photos/{train,heldout}/ (make photos).
#
# Debian packages are fetched with `apt-get download` at the pinned version into a cache and unpacked with
# `dpkg -x` (nothing is installed, root is not needed); scikit-image's sample photographs are copied from the
# installed wheel. Every file's SHA-256 is checked against the manifest, so every machine gets the same
# bytes and the same held-out split. A second run with an unchanged manifest returns at once (a stamp file).
#
#   PHOTOS_DIR    where to lay them out   (default: data/photos in the repository)
#   PHOTOS_CACHE  where the .deb files and their unpacked trees live (default: ~/.cache/aecodec/photos)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MANIFEST="$ROOT/tools/photos.tsv"
OUT=${PHOTOS_DIR:-$ROOT/data/photos}
CACHE=${PHOTOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aecodec/photos}
PY=${PYTHON:-$ROOT/.venv/bin/python}
STAMP="$OUT/.manifest-$(sha256sum "$MANIFEST" | cut -c1-16)"

if [ -f "$STAMP" ]; then
  echo "photos: $(ls "$OUT/train" | wc -l) train, $(ls "$OUT/heldout" | wc -l) held out in $OUT (up to date)"
  exit 0
fi
rows=$(grep -v '^#' "$MANIFEST" | grep -v '^[[:space:]]*$')
mkdir -p "$CACHE/debs" "$CACHE/x" "$OUT/train" "$OUT/heldout"

# 1. The Debian packages, each at its pinned version, downloaded and unpacked once.
updated=0
while IFS=$'\t' read -r pkg version; do
  deb_version=${version//:/%3a}  # apt-get download names files with the epoch's colon escaped
  deb="$CACHE/debs/${pkg}_${deb_version}_all.deb"
  if [ ! -f "$deb" ]; then
    echo "photos: apt-get download $pkg=$version"
    if ! (cd "$CACHE/debs" && apt-get download -q=2 "$pkg=$version" 2>/dev/null); then
      if [ "$updated" = 0 ] && [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        updated=1
      fi
      (cd "$CACHE/debs" && apt-get download -q=2 "$pkg=$version") || {
        echo "error: cannot download Debian package $pkg=$version (apt-get download); see docs/photo_training.md" >&2
        exit 1
      }
    fi
  fi
  tree="$CACHE/x/$pkg-$deb_version"
  if [ ! -f "$tree/.unpacked" ]; then
    rm -rf "$tree"
    dpkg -x "$deb" "$tree"
    touch "$tree/.unpacked"
  fi
done < <(awk -F'\t' '$2 != "scikit-image" {print $2 "\t" $3}' <<<"$rows" | sort -u)

# 2. Each photograph into its split, checked byte for byte.
SKIMAGE=$("$PY" -c 'import os, skimage; print(os.path.dirname(os.path.dirname(skimage.__file__)))') || {
  echo "error: scikit-image is not importable by $PY (make setup installs it)" >&2
  exit 1
}
declare -A wanted=()
while IFS=$'\t' read -r split pkg version path name licence sha; do
  if [ "$pkg" = scikit-image ]; then
    src="$SKIMAGE/$path"
  else
    src="$CACHE/x/$pkg-${version//:/%3a}/$path"
  fi
  dst="$OUT/$split/$name"
  wanted["$split/$name"]=1
  if [ -f "$dst" ] && [ "$(sha256sum "$dst" | cut -d' ' -f1)" = "$sha" ]; then
    continue
  fi
  [ -f "$src" ] || { echo "error: $pkg $version has no $path" >&2; exit 1; }
  got=$(sha256sum "$src" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "error: $pkg $version: $path has SHA-256 $got, the manifest says $sha" >&2
    exit 1
  fi
  cp "$src" "$dst.tmp" && mv "$dst.tmp" "$dst"
done <<<"$rows"

# 3. Nothing else in the two splits (a photo moved between splits must not stay in both).
for split in train heldout; do
  for f in "$OUT/$split"/*; do
    [ -e "$f" ] || continue
    if [ -z "${wanted["$split/$(basename "$f")"]:-}" ]; then
      echo "photos: removing $f (not in tools/photos.tsv's $split split)"
      rm -f "$f"
    fi
  done
done
rm -f "$OUT"/.manifest-*
touch "$STAMP"
echo "photos: $(ls "$OUT/train" | wc -l) train, $(ls "$OUT/heldout" | wc -l) held out in $OUT"
