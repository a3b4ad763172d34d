"""Print an image's size as a registry sees it: `objdetect:cuda 3.9 GB uncompressed, 1.8 GB compressed`.

    python scripts/image_size.py podman|docker objdetect:cuda

Uncompressed: the engine's own image size (the sum of its layers). Compressed: each layer tar
gzip-compressed at level 6, as `docker push` uploads it and ECR stores it, summed; computed
while streaming `<engine> save`, so no copy of the image is written to disk.
"""

import subprocess
import sys
import tarfile
import zlib


def uncompressed_bytes(engine: str, tag: str) -> int:
    out = subprocess.run([engine, "image", "inspect", "--format", "{{.Size}}", tag],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def compressed_bytes(engine: str, tag: str) -> int:
    command = [engine, "save", tag] if engine == "docker" else [engine, "save", "--format", "docker-archive", tag]
    total = 0
    with subprocess.Popen(command, stdout=subprocess.PIPE) as save:
        with tarfile.open(fileobj=save.stdout, mode="r|") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(".tar"):
                    layer = archive.extractfile(member)
                    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing
                    for chunk in iter(lambda: layer.read(1 << 22), b""):
                        total += len(compressor.compress(chunk))
                    total += len(compressor.flush())
        if save.wait() != 0:
            raise SystemExit(f"{engine} save {tag} failed")
    return total


def main() -> int:
    engine, tag = sys.argv[1], sys.argv[2]
    raw, packed = uncompressed_bytes(engine, tag), compressed_bytes(engine, tag)
    print(f"{tag} {raw / 1e9:.2f} GB uncompressed, {packed / 1e9:.2f} GB compressed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
