// Package ociimage builds Sortie's container images without a Docker daemon and without
// pulling anything: a static Go binary in one layer on an empty base, run as a non-root user,
// written as an OCI image layout in a tar archive.
// It uses github.com/google/go-containerregistry, the library ko and crane are built on.
package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// User is the uid:gid every image runs as (distroless' "nonroot").
const User = "65532:65532"

const uid = 65532

// Spec describes one image.
type Spec struct {
	// Name is the binary's name inside the image (/<Name>) and the image's name
	// (sortie-<Name>, or "sortie" for the CLI).
	Name string
	// Package is the Go package to build, e.g. "./services/planner/cmd/planner".
	Package string
}

// Specs are Sortie's images: the five services and the operator CLI.
var Specs = []Spec{
	{Name: "planner", Package: "./services/planner/cmd/planner"},
	{Name: "provisioner", Package: "./services/provisioner/cmd/provisioner"},
	{Name: "bootstrapper", Package: "./services/bootstrapper/cmd/bootstrapper"},
	{Name: "monitor", Package: "./services/monitor/cmd/monitor"},
	{Name: "reaper", Package: "./services/reaper/cmd/reaper"},
	{Name: "sortie", Package: "./cmd/sortie"},
}

// ImageName is the repository name of a spec's image: sortie-<name>, or sortie for the CLI.
func (s Spec) ImageName() string {
	if s.Name == "sortie" {
		return "sortie"
	}
	return "sortie-" + s.Name
}

// Options control a build.
type Options struct {
	// Dir is the module's root, where `go build` runs.
	Dir string
	// Arch is the target GOARCH (amd64 or arm64; default amd64).
	Arch string
	// Created is the image's creation time (default the Unix epoch, so builds are
	// reproducible; SOURCE_DATE_EPOCH sets it in the command).
	Created time.Time
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)

// BuildBinary compiles the spec's package into dir as a static Linux binary.
func BuildBinary(ctx context.Context, s Spec, opts Options, dir string) (string, error) {
	if !nameRE.MatchString(s.Name) {
		return "", fmt.Errorf("image name %q: want [a-z][a-z0-9-]*", s.Name)
	}
	arch := opts.Arch
	if arch == "" {
		arch = "amd64"
	}
	out := filepath.Join(dir, s.Name)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", out, s.Package)
	cmd.Dir = opts.Dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building %s: %w\n%s", s.Package, err, stderr.Bytes())
	}
	return out, nil
}

// Image makes the image of one binary: a single layer holding /<name> (mode 0755, owned by
// 65532), entrypoint /<name>, user 65532:65532, on an empty base.
func Image(s Spec, binary string, opts Options) (v1.Image, error) {
	arch := opts.Arch
	if arch == "" {
		arch = "amd64"
	}
	bin, err := os.ReadFile(binary)
	if err != nil {
		return nil, fmt.Errorf("reading binary: %w", err)
	}
	layerTar, err := singleFileTar("/"+s.Name, bin, opts.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("making layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
		Created: v1.Time{Time: opts.Created}, CreatedBy: "sortie deployments/images: go build " + s.Package,
	}}); err != nil {
		return nil, fmt.Errorf("adding layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Created = "linux", arch, v1.Time{Time: opts.Created}
	cfg.Config.Entrypoint = []string{"/" + s.Name}
	cfg.Config.Cmd = nil
	cfg.Config.User = User
	cfg.Config.WorkingDir = "/"
	cfg.Config.Env = nil
	cfg.Config.Labels = map[string]string{"org.opencontainers.image.title": s.ImageName()}
	return mutate.ConfigFile(img, cfg)
}

// singleFileTar is a tar stream holding one executable file.
func singleFileTar(path string, content []byte, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg, Name: path[1:], Mode: 0o755, Size: int64(len(content)),
		Uid: uid, Gid: uid, Uname: "nonroot", Gname: "nonroot", ModTime: mtime, Format: tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(content); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Write saves img at path as an OCI image layout in a tar archive (an "oci-archive": what
// `podman load`, `skopeo copy oci-archive:` and `docker load` since Docker 25 take), its
// manifest annotated with tag (e.g. "sortie-planner:v1.2.0") as the image's name and
// version.
func Write(path, tag string, img v1.Image) error {
	ref, err := name.NewTag(tag, name.WeakValidation)
	if err != nil {
		return fmt.Errorf("image tag %q: %w", tag, err)
	}
	dir, err := os.MkdirTemp("", "sortie-oci-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("writing layout: %w", err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref.TagStr(),
		"io.containerd.image.name":          ref.Name(),
	})); err != nil {
		return fmt.Errorf("writing image: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return tarDir(path, dir)
}

// tarDir writes the files under dir to a tar archive at path, sorted, with fixed times.
func tarDir(path, dir string) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name, hdr.ModTime, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = filepath.ToSlash(rel), time.Unix(0, 0), 0, 0, "", ""
		if d.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err != nil {
		return fmt.Errorf("archiving %s: %w", path, err)
	}
	return tw.Close()
}

// Build compiles the spec and writes its image tarball to <outDir>/<image>.tar, tagged
// <image>:<version>; it returns the tarball's path.
func Build(ctx context.Context, s Spec, version, outDir string, opts Options) (string, error) {
	tmp, err := os.MkdirTemp("", "sortie-image-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	bin, err := BuildBinary(ctx, s, opts, tmp)
	if err != nil {
		return "", err
	}
	img, err := Image(s, bin, opts)
	if err != nil {
		return "", err
	}
	path := filepath.Join(outDir, s.ImageName()+".tar")
	if err := Write(path, s.ImageName()+":"+version, img); err != nil {
		return "", err
	}
	return path, nil
}
