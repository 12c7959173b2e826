package heal

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/dnspulse/dnspulse/e2e/cluster"
	"github.com/dnspulse/dnspulse/healer/audit"
)

// AuditLine is one line of the healer's audit log, as the healer's own audit package reads
// it back, with the healer pod whose log held it.
type AuditLine struct {
	audit.Line
	// Pod is the healer pod whose log held the line.
	Pod string
}

func (l AuditLine) String() string { return l.Pod + ": " + l.Raw }

// Audit reads the audit lines of every healer pod so far: the chart sends the audit log to stdout,
// which the node agent writes to LogDir/pods/<ns>_<pod>_healer.log (appended across restarts),
// between the healer's own log lines (audit.Read skips those).
func Audit(c *cluster.Cluster) ([]AuditLine, error) {
	files, err := filepath.Glob(filepath.Join(c.LogDir, "pods", HealerNamespace+"_*_healer.log"))
	if err != nil {
		return nil, err
	}
	var out []AuditLine
	for _, f := range files {
		pod := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), HealerNamespace+"_"), "_healer.log")
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		// The node agent writes the container's stdout and stderr into one file as it reads
		// them, so a line can be cut by another (and the last one is being written): such a
		// line is skipped, the others stand.
		for _, raw := range bytes.Split(b, []byte("\n")) {
			if l, err := audit.Parse(raw); err == nil {
				out = append(out, AuditLine{Line: l, Pod: pod})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

// FindAudit returns the first audit line at or after since that match accepts.
func FindAudit(c *cluster.Cluster, since time.Time, match func(AuditLine) bool) (AuditLine, bool) {
	lines, err := Audit(c)
	if err != nil {
		return AuditLine{}, false
	}
	for _, l := range lines {
		if !l.Time.Before(since) && match(l) {
			return l, true
		}
	}
	return AuditLine{}, false
}

// AuditSince returns every audit line at or after since.
func AuditSince(c *cluster.Cluster, since time.Time) []AuditLine {
	lines, _ := Audit(c)
	var out []AuditLine
	for _, l := range lines {
		if !l.Time.Before(since) {
			out = append(out, l)
		}
	}
	return out
}
