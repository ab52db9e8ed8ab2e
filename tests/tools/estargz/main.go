// estargz-writer: converts a layer (tar, tar+gzip or tar+zstd) into an eStargz blob with
// the stargz-snapshotter library's estargz.Build, the writer ctr-remote and nerdctl use.
// strata's tests use it as an independent eStargz writer (tests/tools/estargz.sh builds it
// offline from Debian's golang-github-containerd-stargz-snapshotter-dev).
//
// Usage: estargz-writer [-chunk-size N] [-level N] [-prioritize a,b] IN OUT
//
// Writes the blob to OUT and one JSON object to stdout:
//
//	{"digest": "sha256:…", "size": N, "diffID": "sha256:…", "tocDigest": "sha256:…",
//	 "uncompressedSize": N}
//
// digest and size describe OUT; diffID and uncompressedSize the uncompressed tar (which
// is not IN's tar: Build adds the landmark file and stargz.index.json and may reorder
// entries); tocDigest is the value of the containerd.io/snapshot/stargz/toc.digest
// annotation (the digest of the uncompressed TOC JSON).
package main

import (
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
)

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

func run() error {
	chunkSize := flag.Int("chunk-size", 0, "chunk size in bytes (0: the library's default, 4 MiB)")
	level := flag.Int("level", -100, "gzip level (default: the library's, best compression)")
	prioritize := flag.String("prioritize", "", "comma-separated paths to put first (before .prefetch.landmark)")
	flag.Parse()
	if flag.NArg() != 2 {
		return fmt.Errorf("usage: estargz-writer [-chunk-size N] [-level N] [-prioritize a,b] IN OUT")
	}
	in, err := os.Open(flag.Arg(0))
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	var opts []estargz.Option
	if *chunkSize > 0 {
		opts = append(opts, estargz.WithChunkSize(*chunkSize))
	}
	if *level != -100 {
		opts = append(opts, estargz.WithCompressionLevel(*level))
	}
	if *prioritize != "" {
		opts = append(opts, estargz.WithPrioritizedFiles(strings.Split(*prioritize, ",")))
	}
	blob, err := estargz.Build(io.NewSectionReader(in, 0, st.Size()), opts...)
	if err != nil {
		return fmt.Errorf("estargz.Build %s: %w", flag.Arg(0), err)
	}
	tmp := flag.Arg(1) + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	h := sha256.New()
	var size counter
	if _, err := io.Copy(io.MultiWriter(out, h, &size), blob); err != nil {
		out.Close()
		return err
	}
	if err := blob.Close(); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, flag.Arg(1)); err != nil {
		return err
	}
	uncompressed, err := uncompressedSize(flag.Arg(1))
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]interface{}{
		"digest":           fmt.Sprintf("sha256:%x", h.Sum(nil)),
		"size":             size.n,
		"diffID":           blob.DiffID().String(),
		"tocDigest":        blob.TOCDigest().String(),
		"uncompressedSize": uncompressed,
	})
}

// uncompressedSize decompresses every gzip member of the blob at path.
func uncompressedSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f) // multistream: every member
	if err != nil {
		return 0, err
	}
	defer zr.Close()
	var c counter
	_, err = io.Copy(&c, zr)
	return c.n, err
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "estargz-writer: %v\n", err)
		os.Exit(1)
	}
}
