package events

import (
	"strings"
	"unicode/utf8"
)

// CleanText makes s acceptable as free text of at most max bytes: invalid UTF-8 becomes
// U+FFFD, NUL bytes are dropped, and the result is cut on a rune boundary. Producers use
// it on anything they did not write themselves (command output, error strings).
func CleanText(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "")
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// CleanTail turns command output into a valid output or log tail: its last MaxTailLines
// lines (a final newline ends the last line, it does not start another), each cleaned
// with CleanText to MaxTextBytes, oldest first. Empty output gives nil.
func CleanTail(output string) []string {
	output = strings.TrimSuffix(output, "\n")
	if output == "" {
		return nil
	}
	lines := strings.Split(output, "\n")
	if len(lines) > MaxTailLines {
		lines = lines[len(lines)-MaxTailLines:]
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = CleanText(strings.TrimSuffix(l, "\r"), MaxTextBytes)
	}
	return out
}
