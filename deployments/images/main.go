// Command images builds Sortie's six container images (the five services and the CLI) as
// image tarballs, without Docker and without pulling a base image: `task images`, or
//
//	go run ./deployments/images [--out bin/images] [--version dev] [--arch amd64] [planner ...]
//
// Each tarball holds one layer with the static binary at /<name>, entrypoint /<name>, user
// 65532:65532. Load it with `docker load -i`, `podman load -i`, or push it with
// `crane push bin/images/sortie-planner.tar <registry>/sortie-planner:<version>`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"time"

	"github.com/sortie-fleet/sortie/pkg/ociimage"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run() error {
	out := flag.String("out", "bin/images", "directory the tarballs are written to")
	version := flag.String("version", "dev", "tag of every image")
	arch := flag.String("arch", "amd64", "target architecture (GOARCH)")
	flag.Parse()
	opts := ociimage.Options{Dir: ".", Arch: *arch, Created: time.Unix(0, 0).UTC()}
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		sec, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
		opts.Created = time.Unix(sec, 0).UTC()
	}
	specs := ociimage.Specs
	if names := flag.Args(); len(names) > 0 {
		specs = nil
		for _, n := range names {
			i := slices.IndexFunc(ociimage.Specs, func(s ociimage.Spec) bool { return s.Name == n })
			if i < 0 {
				return fmt.Errorf("no image %q", n)
			}
			specs = append(specs, ociimage.Specs[i])
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	for _, s := range specs {
		path, err := ociimage.Build(ctx, s, *version, *out, opts)
		if err != nil {
			return err
		}
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		fmt.Printf("%s\t%s:%s\t%.1f MiB\n", path, s.ImageName(), *version, float64(fi.Size())/(1<<20))
	}
	return nil
}
