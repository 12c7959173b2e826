package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/dnspulse/dnspulse/healer/api"
)

// Line is one audit line as read back: every event's fields in one struct (a field that
// an event does not carry is zero).
type Line struct {
	Time  time.Time `json:"time"`
	Event Event     `json:"event"`
	// state and remediation
	Replica string `json:"replica"`
	// state
	From            api.State `json:"from"`
	To              api.State `json:"to"`
	DetectionMillis *float64  `json:"detectionMillis"`
	// state and global
	Reasons []string `json:"reasons"`
	// remediation
	Action  api.Action `json:"action"`
	DryRun  bool       `json:"dryRun"`
	Result  api.Result `json:"result"`
	Message string     `json:"message"`
	// global
	Active   bool     `json:"active"`
	Replicas []string `json:"replicas"`
	// every other event
	Fields map[string]any `json:"fields"`

	// Raw is the line as written.
	Raw string `json:"-"`
}

func (l Line) String() string { return l.Raw }

// ErrNotAudit is returned by Parse for a line that is not an audit line at all (a log
// line of another format in the same stream); a malformed audit line is another error.
var ErrNotAudit = errors.New("not an audit line")

// Parse reads one line. An audit line is a JSON object with a time and an event, and the
// fields its event requires.
func Parse(b []byte) (Line, error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' || !bytes.Contains(b, []byte(`"event"`)) {
		return Line{}, ErrNotAudit
	}
	var l Line
	if err := json.Unmarshal(b, &l); err != nil {
		return Line{}, fmt.Errorf("audit line %.80q: %w", b, err)
	}
	l.Raw = string(b)
	switch {
	case l.Event == "":
		return l, fmt.Errorf("audit line %.80q: no event", b)
	case l.Time.IsZero():
		return l, fmt.Errorf("audit line %.80q: no time", b)
	case l.Event == EventState && (l.Replica == "" || l.To == "" || l.Reasons == nil):
		return l, fmt.Errorf("audit line %.80q: a state line needs replica, to and reasons", b)
	case l.Event == EventRemediation && (l.Replica == "" || l.Action == "" || l.Result == ""):
		return l, fmt.Errorf("audit line %.80q: a remediation line needs replica, action and result", b)
	}
	return l, nil
}

// Read parses every audit line of r, skipping lines of other formats (a pod log holds
// the healer's slog lines too) and failing on a malformed audit line.
func Read(r io.Reader) ([]Line, error) {
	var out []Line
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l, err := Parse(sc.Bytes())
		if errors.Is(err, ErrNotAudit) {
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, l)
	}
	return out, sc.Err()
}
