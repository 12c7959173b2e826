//go:build image

// Package image tests the images `make image` builds: it opens each OCI archive the way a
// container runtime does (index.json -> manifest -> config + layers, layers applied in
// order to an empty root), checks the config, and runs the entrypoint from the unpacked
// root filesystem. Run with `make test-image` (root; builds the images first).
package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

const (
	envImagesDir = "IMAGES_DIR"         // where NAME.tar lie; default ../../_output/images
	envLaunch    = "DNSPULSE_CAPLAUNCH" // set when this test binary is re-executed as the launcher
	nonroot      = 65532
)

// TestMain doubles as a tiny container runtime stand-in: re-executed with DNSPULSE_CAPLAUNCH
// set, it drops to uid 65532 keeping only NET_BIND_SERVICE, as runc does for a container
// with `capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}`, `allowPrivilegeEscalation: false`.
func TestMain(m *testing.M) {
	if os.Getenv(envLaunch) != "" {
		if err := launchLikeRunc(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "launcher:", err)
			os.Exit(111)
		}
	}
	os.Exit(m.Run())
}

type ociIndex struct {
	Manifests []ociDescriptor `json:"manifests"`
}

type ociDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Platform  *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
	} `json:"platform,omitempty"`
}

type ociManifest struct {
	Config ociDescriptor   `json:"config"`
	Layers []ociDescriptor `json:"layers"`
}

type ociConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		User         string            `json:"User"`
		Entrypoint   []string          `json:"Entrypoint"`
		Cmd          []string          `json:"Cmd"`
		Labels       map[string]string `json:"Labels"`
		ExposedPorts map[string]any    `json:"ExposedPorts"`
	} `json:"config"`
}

// image is one unpacked archive.
type image struct {
	config ociConfig
	rootfs string
	// xattrs seen per path in the layers (PAX SCHILY.xattr.*).
	xattrs map[string]map[string]string
}

func imagesDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv(envImagesDir); d != "" {
		return d
	}
	d, err := filepath.Abs("../../_output/images")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func unpack(t *testing.T, name string) *image {
	t.Helper()
	archive := filepath.Join(imagesDir(t), name+".tar")
	if _, err := os.Stat(archive); err != nil {
		t.Fatalf("%s: %v (run `make image` first)", archive, err)
	}
	layout := t.TempDir()
	if err := untar(archive, layout, nil); err != nil {
		t.Fatalf("%s: %v", archive, err)
	}
	var index ociIndex
	readJSON(t, filepath.Join(layout, "index.json"), &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("%s: index.json has %d manifests, want 1", archive, len(index.Manifests))
	}
	// Docker's `docker save` (containerd image store) may add a level: an image index
	// whose manifests are per platform. Descend to this platform's manifest.
	desc := index.Manifests[0]
	for desc.MediaType == "application/vnd.oci.image.index.v1+json" {
		var inner ociIndex
		readJSON(t, blobPath(t, layout, desc.Digest), &inner)
		found := false
		for _, m := range inner.Manifests {
			if m.Platform == nil || (m.Platform.OS == "linux" && m.Platform.Architecture == runtime.GOARCH) {
				desc, found = m, true
				break
			}
		}
		if !found {
			t.Fatalf("%s: no linux/%s manifest in the image index", archive, runtime.GOARCH)
		}
	}
	var manifest ociManifest
	readJSON(t, blobPath(t, layout, desc.Digest), &manifest)
	img := &image{rootfs: t.TempDir(), xattrs: map[string]map[string]string{}}
	readJSON(t, blobPath(t, layout, manifest.Config.Digest), &img.config)
	if len(manifest.Layers) == 0 {
		t.Fatalf("%s: manifest has no layers", archive)
	}
	for _, l := range manifest.Layers {
		if err := untar(blobPath(t, layout, l.Digest), img.rootfs, img.xattrs); err != nil {
			t.Fatalf("%s: layer %s: %v", archive, l.Digest, err)
		}
	}
	return img
}

func blobPath(t *testing.T, layout, digest string) string {
	t.Helper()
	algo, hex, ok := strings.Cut(digest, ":")
	if !ok || algo != "sha256" || len(hex) != 64 || strings.ContainsAny(hex, "/.") {
		t.Fatalf("bad digest %q", digest)
	}
	return filepath.Join(layout, "blobs", algo, hex)
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// untar extracts a (possibly gzipped) tar into dir, refusing paths that leave it, and
// applies xattrs as a runtime would (the coredns binary's file capability travels as one).
func untar(path, dir string, xattrs map[string]map[string]string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var r io.Reader = f
	magic := make([]byte, 2)
	if _, err := io.ReadFull(f, magic); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return err
		}
		defer gz.Close()
		r = gz
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean("/" + h.Name)
		if base := filepath.Base(name); strings.HasPrefix(base, ".wh.") {
			// Whiteouts delete from lower layers; our single-layer images have none, but
			// honour them so the check stays true if a layer is ever added.
			if err := os.RemoveAll(filepath.Join(dir, filepath.Dir(name), strings.TrimPrefix(base, ".wh."))); err != nil {
				return err
			}
			continue
		}
		target := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			out, err := os.OpenFile(target, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, os.FileMode(h.Mode).Perm())
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, tr); err != nil {
				out.Close()
				return err
			}
			if err := out.Close(); err != nil {
				return err
			}
			if err := os.Chmod(target, os.FileMode(h.Mode).Perm()); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unexpected tar entry type %q", h.Name, h.Typeflag)
		}
		for k, v := range h.PAXRecords {
			attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
			if !ok || xattrs == nil {
				continue
			}
			if xattrs[name] == nil {
				xattrs[name] = map[string]string{}
			}
			xattrs[name][attr] = v
			if err := unix.Setxattr(target, attr, []byte(v), 0); err != nil {
				return fmt.Errorf("%s: setxattr %s: %w", h.Name, attr, err)
			}
		}
	}
}

func checkConfig(t *testing.T, img *image, title, entrypoint string) {
	t.Helper()
	c := img.config
	if c.OS != "linux" || c.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", c.OS, c.Architecture, runtime.GOARCH)
	}
	if c.Config.User != "65532:65532" && c.Config.User != "65532" {
		t.Errorf("User %q, want 65532 (nonroot)", c.Config.User)
	}
	if len(c.Config.Entrypoint) != 1 || c.Config.Entrypoint[0] != entrypoint {
		t.Errorf("Entrypoint %q, want [%s]", c.Config.Entrypoint, entrypoint)
	}
	labels := c.Config.Labels
	if got := labels["org.opencontainers.image.source"]; got != "https://github.com/dnspulse/dnspulse" {
		t.Errorf("label source = %q", got)
	}
	if got := labels["org.opencontainers.image.title"]; got != title {
		t.Errorf("label title = %q, want %q", got, title)
	}
	if labels["org.opencontainers.image.version"] == "" {
		t.Error("label org.opencontainers.image.version is empty")
	}
	// What the scratch image must carry besides the binary.
	passwd, err := os.ReadFile(filepath.Join(img.rootfs, "etc/passwd"))
	if err != nil || !strings.Contains(string(passwd), "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd lacks the nonroot user 65532: %v %q", err, passwd)
	}
	group, err := os.ReadFile(filepath.Join(img.rootfs, "etc/group"))
	if err != nil || !strings.Contains(string(group), "nonroot:x:65532:") {
		t.Errorf("/etc/group lacks the nonroot group 65532: %v %q", err, group)
	}
	ca, err := os.ReadFile(filepath.Join(img.rootfs, "etc/ssl/certs/ca-certificates.crt"))
	if err != nil || !bytes.Contains(ca, []byte("BEGIN CERTIFICATE")) {
		t.Errorf("no CA bundle at /etc/ssl/certs/ca-certificates.crt: %v", err)
	}
	// Only the binary is executable: a shell or loader in a scratch image would be a leak.
	filepath.WalkDir(img.rootfs, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel := "/" + strings.TrimPrefix(p, img.rootfs+"/")
		if info.Mode()&0o111 != 0 && rel != entrypoint {
			t.Errorf("unexpected executable %s in the image", rel)
		}
		return nil
	})
}

func run(t *testing.T, argv ...string) string {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{} // as in a scratch container: nothing inherited
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%q: %v\n%s", argv, err, out)
	}
	return string(out)
}

func TestCoreDNSImage(t *testing.T) {
	img := unpack(t, "coredns")
	checkConfig(t, img, "dnspulse-coredns", "/coredns")
	for _, p := range []string{"53/tcp", "53/udp", "9155/tcp"} {
		if _, ok := img.config.Config.ExposedPorts[p]; !ok {
			t.Errorf("port %s not exposed: %v", p, img.config.Config.ExposedPorts)
		}
	}
	bin := filepath.Join(img.rootfs, "coredns")
	plugins := run(t, bin, "-plugins")
	if !containsLine(plugins, "pulse") && !containsLine(plugins, "dns.pulse") {
		t.Errorf("coredns -plugins does not list pulse:\n%s", plugins)
	}
	if caps := img.xattrs["/coredns"]["security.capability"]; caps == "" {
		t.Error("/coredns carries no file capability (want cap_net_bind_service+ep)")
	} else if !hasNetBindService(caps) {
		t.Errorf("/coredns file capability %x lacks cap_net_bind_service", caps)
	}
}

// TestCoreDNSBinds53AsNonRoot proves the documented securityContext works: uid 65532,
// capabilities drop ALL + add NET_BIND_SERVICE, no_new_privs, and the image's /coredns
// binds port 53 and answers; the same binary without its file capability cannot.
func TestCoreDNSBinds53AsNonRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to drop to uid 65532 like a container runtime")
	}
	img := unpack(t, "coredns")
	bin := filepath.Join(img.rootfs, "coredns")
	if err := os.Chmod(img.rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Dir(img.rootfs), filepath.Dir(filepath.Dir(img.rootfs))} {
		// t.TempDir() is 0700 root; the nonroot process must reach its binary and Corefile.
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	addr := freeLoopback53(t)
	corefile := filepath.Join(img.rootfs, "Corefile")
	conf := fmt.Sprintf(".:53 {\n    bind %s\n    whoami\n}\n", addr)
	if err := os.WriteFile(corefile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("without file capability", func(t *testing.T) {
		plain := filepath.Join(img.rootfs, "coredns-nocap")
		copyFile(t, bin, plain)
		out, err := launch(t, plain, corefile, addr)
		if err == nil {
			t.Fatalf("coredns without its file capability answered on %s:53; the capability test proves nothing", addr)
		}
		if !strings.Contains(out, "permission denied") {
			t.Errorf("want a permission error, got %v:\n%s", err, out)
		}
	})
	t.Run("image binary", func(t *testing.T) {
		out, err := launch(t, bin, corefile, addr)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	})
}

// launch starts bin through the runc-like launcher and waits until it answers a query on
// addr:53, or exits, or a deadline passes. It returns the process output.
func launch(t *testing.T, bin, corefile, addr string) (string, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(self, bin, "-conf", corefile)
	cmd.Env = []string{envLaunch + "=1"}
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("example.org.", dns.TypeA)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			return out.String(), fmt.Errorf("coredns exited: %v", err)
		default:
		}
		if r, _, err := c.Exchange(m, net.JoinHostPort(addr, "53")); err == nil && r.Rcode == dns.RcodeSuccess {
			return out.String(), nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return out.String(), fmt.Errorf("no answer on %s:53 within 20s", addr)
}

// launchLikeRunc does what runc does before it execs a container's entrypoint for a
// non-root user: keep capabilities across setuid, cut the bounding set to the granted
// ones, switch to 65532, set permitted/effective to the granted set, no_new_privs
// (allowPrivilegeEscalation: false), and exec with an empty environment.
func launchLikeRunc(argv []string) error {
	if len(argv) == 0 {
		return errors.New("no command")
	}
	runtime.LockOSThread() // credentials below are per thread; exec happens from this one
	if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_KEEPCAPS: %w", err)
	}
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if c == unix.CAP_NET_BIND_SERVICE {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("PR_CAPBSET_DROP %d: %w", c, err)
		}
	}
	// Raw syscalls: Go's Setuid would change every thread; only this one execs.
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, 0, 0, 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, nonroot, nonroot, nonroot); e != 0 {
		return fmt.Errorf("setresgid: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, nonroot, nonroot, nonroot); e != 0 {
		return fmt.Errorf("setresuid: %w", e)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	bit := uint32(1) << unix.CAP_NET_BIND_SERVICE
	data[0].Permitted, data[0].Effective = bit, bit
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_NO_NEW_PRIVS: %w", err)
	}
	return unix.Exec(argv[0], argv, []string{})
}

// hasNetBindService decodes a vfs_cap_data xattr (v2 or v3) and reports whether
// cap_net_bind_service is in its permitted set with the effective bit.
func hasNetBindService(raw string) bool {
	b := []byte(raw)
	if len(b) < 12 {
		return false
	}
	magic := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
	effective := magic&0x1 != 0
	permittedLow := uint32(b[4]) | uint32(b[5])<<8 | uint32(b[6])<<16 | uint32(b[7])<<24
	return effective && permittedLow&(1<<unix.CAP_NET_BIND_SERVICE) != 0
}

// freeLoopback53 finds a 127.0.0.0/8 address whose port 53 is free (UDP and TCP).
func freeLoopback53(t *testing.T) string {
	t.Helper()
	for i := 0; i < 50; i++ {
		addr := fmt.Sprintf("127.0.%d.%d", 100+i%100, 53+i)
		u, err := net.ListenPacket("udp", net.JoinHostPort(addr, "53"))
		if err != nil {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(addr, "53"))
		u.Close()
		if err != nil {
			continue
		}
		l.Close()
		return addr
	}
	t.Fatal("no loopback address with a free port 53")
	return ""
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil { // a fresh file: no xattrs
		t.Fatal(err)
	}
}

func containsLine(s, want string) bool {
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == want {
			return true
		}
	}
	return false
}

func TestHealerImage(t *testing.T) {
	img := unpack(t, "healer")
	checkConfig(t, img, "dnspulse-healer", "/healer")
	if _, ok := img.config.Config.ExposedPorts["9156/tcp"]; !ok {
		t.Errorf("port 9156 not exposed: %v", img.config.Config.ExposedPorts)
	}
	out := strings.TrimSpace(run(t, filepath.Join(img.rootfs, "healer"), "--version"))
	want := img.config.Config.Labels["org.opencontainers.image.version"]
	if out == "" {
		t.Fatal("healer --version printed nothing")
	}
	// make evaluates VERSION (git describe --dirty) for each recipe: a tree that turns dirty
	// between the binary's build and the image's may add "-dirty" to one of them only.
	if !strings.Contains(strings.TrimSuffix(out, "-dirty"), strings.TrimSuffix(want, "-dirty")) {
		t.Errorf("healer --version = %q, want it to contain the image's version label %q", out, want)
	}
}
