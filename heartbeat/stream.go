package heartbeat

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// The stream: GET /pulse?watch=1 answers with newline-delimited JSON, one heartbeat per
// line (the same document as GET /pulse), the first at once and then one per tick, for
// as long as the client reads. See plugin/pulse/README.md for the slow-reader policy and
// the limit on watchers.
const (
	WatchParam        = "watch" // GET Path?watch=1
	StreamContentType = "application/x-ndjson"
)

// ErrLineTooLong is returned by StreamReader.Next for a line longer than MaxBodyBytes;
// the stream is unusable after it.
var ErrLineTooLong = fmt.Errorf("heartbeat: stream line longer than %d bytes", MaxBodyBytes)

// A StreamReader reads the heartbeats of a watch stream, one per line, each bounded by
// MaxBodyBytes, decoded by a Decoder: no allocation per heartbeat but for what changed.
type StreamReader struct {
	r   *bufio.Reader
	d   Decoder
	err error // sticky: the stream cannot be resynchronised
}

// NewStreamReader reads the stream from r (a response body).
func NewStreamReader(r io.Reader) *StreamReader {
	return &StreamReader{r: bufio.NewReaderSize(r, MaxBodyBytes+1)}
}

// Next decodes the next heartbeat into hb, reusing hb's storage as Decoder.Decode does. It
// returns io.EOF at the end of the stream, io.ErrUnexpectedEOF when the stream ends in the
// middle of a line, ErrLineTooLong (then always) for an oversized line, and Parse's errors
// for a line that is not a heartbeat (the next line may be fine). Empty lines are skipped.
func (s *StreamReader) Next(hb *Heartbeat) error {
	if s.err != nil {
		return s.err
	}
	for {
		line, err := s.r.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			s.err = ErrLineTooLong
			return s.err
		case errors.Is(err, io.EOF):
			if len(bytes.TrimSpace(line)) > 0 {
				s.err = io.ErrUnexpectedEOF
			} else {
				s.err = io.EOF
			}
			return s.err
		case err != nil:
			s.err = err
			return err
		}
		if line = bytes.TrimRight(line, "\r\n"); len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		return s.d.Decode(line, hb)
	}
}
