package envoyfmt

import (
	"fmt"
	"strconv"
	"time"
)

// Layout is a compiled START_TIME(...) argument: strftime-style
// specifiers (as Envoy takes them) turned into pieces that append without
// parsing anything.
type Layout []timePart

type timeKind uint8

const (
	tLit  timeKind = iota // s, as it is
	tGo                   // t.AppendFormat(b, s): s is one Go layout element
	tUnix                 // %s: seconds since the epoch
	tFrac                 // %f, %Nf: the first n digits of the nanoseconds
)

type timePart struct {
	kind timeKind
	s    string
	n    int
}

// strftime maps a specifier letter to its Go layout.
var strftime = map[byte]string{
	'Y': "2006", 'y': "06", 'm': "01", 'd': "02", 'e': "_2", 'j': "002",
	'H': "15", 'I': "03", 'M': "04", 'S': "05", 'p': "PM",
	'b': "Jan", 'h': "Jan", 'B': "January", 'a': "Mon", 'A': "Monday",
	'z': "-0700", 'Z': "MST",
	'T': "15:04:05", 'F': "2006-01-02", 'D': "01/02/06", 'R': "15:04",
}

// ParseLayout compiles a START_TIME layout: the strftime specifiers above,
// %s (epoch seconds), %f and %1f..%9f (fractional seconds, 9 digits by
// default), %E1S..%E9S and %E*S (seconds with that many fraction digits,
// or as many as needed), %n, %t and %%.
func ParseLayout(s string) (Layout, error) {
	var l Layout
	lit := func(t string) {
		if n := len(l); n > 0 && l[n-1].kind == tLit {
			l[n-1].s += t
			return
		}
		l = append(l, timePart{kind: tLit, s: t})
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			lit(s[i : i+1])
			continue
		}
		i++
		if i >= len(s) {
			return nil, fmt.Errorf("a %% at the end that starts no specifier")
		}
		c := s[i]
		switch {
		case c == '%':
			lit("%")
		case c == 'n':
			lit("\n")
		case c == 't':
			lit("\t")
		case c == 's':
			l = append(l, timePart{kind: tUnix})
		case c == 'f':
			l = append(l, timePart{kind: tFrac, n: 9})
		case c >= '1' && c <= '9' && i+1 < len(s) && s[i+1] == 'f':
			l = append(l, timePart{kind: tFrac, n: int(c - '0')})
			i++
		case c == 'E' && i+2 < len(s) && s[i+2] == 'S' && (s[i+1] == '*' || s[i+1] >= '1' && s[i+1] <= '9'):
			g := "05.999999999"
			if s[i+1] != '*' {
				g = "05." + "000000000"[:s[i+1]-'0']
			}
			l = append(l, timePart{kind: tGo, s: g})
			i += 2
		default:
			g, ok := strftime[c]
			if !ok {
				return nil, fmt.Errorf("unknown time specifier %%%c", c)
			}
			l = append(l, timePart{kind: tGo, s: g})
		}
	}
	return l, nil
}

// defaultLayout is Envoy's START_TIME without an argument
// (%Y-%m-%dT%H:%M:%E3SZ, UTC).
const defaultLayout = "2006-01-02T15:04:05.000Z07:00"

// AppendTime appends t, in UTC, in layout l (nil: Envoy's default).
func (l Layout) AppendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	if l == nil {
		return t.AppendFormat(b, defaultLayout)
	}
	for _, p := range l {
		switch p.kind {
		case tLit:
			b = append(b, p.s...)
		case tGo:
			b = t.AppendFormat(b, p.s)
		case tUnix:
			b = strconv.AppendInt(b, t.Unix(), 10)
		case tFrac:
			ns := t.Nanosecond()
			var d [9]byte
			for k := 8; k >= 0; k-- {
				d[k] = byte('0' + ns%10)
				ns /= 10
			}
			b = append(b, d[:p.n]...)
		}
	}
	return b
}
