package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Builds the planner's image as `task images` does, reads the tarball back and checks what
// is in it: one layer with one static binary, the entrypoint, the non-root user.
func TestBuildPlannerImage(t *testing.T) {
	spec := Specs[slices.IndexFunc(Specs, func(s Spec) bool { return s.Name == "planner" })]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out := t.TempDir()
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	path, err := Build(ctx, spec, "test", out, Options{Dir: "../..", Created: created})
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(out, "sortie-planner.tar") {
		t.Errorf("written to %s", path)
	}
	img := readArchive(t, path, "sortie-planner:test")
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/planner"}) || len(cfg.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [/planner] and none", cfg.Config.Entrypoint, cfg.Config.Cmd)
	}
	if cfg.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532", cfg.Config.User)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" || !cfg.Created.Time.Equal(created) {
		t.Errorf("os/arch/created %s/%s/%s", cfg.OS, cfg.Architecture, cfg.Created)
	}
	if len(cfg.Config.Env) != 0 {
		t.Errorf("environment %q, want none", cfg.Config.Env)
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1 (empty base, the binary)", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var files []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, h.Name)
		if h.Name != "planner" {
			continue
		}
		if h.Mode != 0o755 || h.Uid != 65532 || h.Gid != 65532 {
			t.Errorf("planner mode %o owner %d:%d", h.Mode, h.Uid, h.Gid)
		}
		bin, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		f, err := elf.NewFile(bytes.NewReader(bin))
		if err != nil {
			t.Fatalf("planner is not an ELF binary: %v", err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Error("planner is dynamically linked (has an interpreter): CGO_ENABLED=0 not in force")
			}
		}
		if !bytes.Contains(bin, []byte("x509roots/fallback")) {
			t.Error("planner does not embed golang.org/x/crypto/x509roots/fallback")
		}
		checkHealthcheck(t, bin)
	}
	if !slices.Equal(files, []string{"planner"}) {
		t.Errorf("layer holds %q, want only planner", files)
	}
}

// checkHealthcheck runs the image's binary as ECS's health check does, `/planner
// healthcheck`, against a /healthz that answers 200 and then 503.
func checkHealthcheck(t *testing.T, bin []byte) {
	t.Helper()
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Logf("not running the linux/amd64 binary on %s/%s", runtime.GOOS, runtime.GOARCH)
		return
	}
	exe := filepath.Join(t.TempDir(), "planner")
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	for _, c := range []struct {
		status int
		ok     bool
	}{{http.StatusOK, true}, {http.StatusServiceUnavailable, false}} {
		status = c.status
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, exe, "healthcheck")
		cmd.Env = []string{"SORTIE_HTTP_ADDR=:" + port}
		out, err := cmd.CombinedOutput()
		cancel()
		if (err == nil) != c.ok {
			t.Errorf("planner healthcheck with /healthz %d: %v, want success %v\n%s", c.status, err, c.ok, out)
		}
	}
}

// readArchive unpacks an OCI archive and returns its one image, checking its name.
func readArchive(t *testing.T, path, wantName string) v1.Image {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(target, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(target, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 {
		t.Fatalf("%d manifests in the archive, want 1", len(m.Manifests))
	}
	d := m.Manifests[0]
	if got := d.Annotations["io.containerd.image.name"]; !strings.HasSuffix(got, wantName) {
		t.Errorf("image name %q, want %s", got, wantName)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestBuildRejectsBadName(t *testing.T) {
	if _, err := BuildBinary(context.Background(), Spec{Name: "../x", Package: "./cmd/sortie"}, Options{Dir: "../.."}, t.TempDir()); err == nil {
		t.Error("a name with a path was accepted")
	}
}
