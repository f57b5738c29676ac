package intercept

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// This file translates a ruleset to nftables netlink messages and back.
// Registers: nft's 16-byte registers 1 and 2, like the nft binary uses.

const (
	ifNameLen = 16 // IFNAMSIZ
	rtnLocal  = 2  // RTN_LOCAL, what `fib daddr type local` compares with
)

func nftConn(fd int) (*nftables.Conn, error) {
	if fd != 0 {
		return nftables.New(nftables.WithNetNSFd(fd))
	}
	return nftables.New()
}

// replaceTable installs rs's table in one batch that first creates and
// deletes any previous table of that name, so the swap is atomic: packets
// see either the old rules or the new ones, never none.
func replaceTable(c *nftables.Conn, rs ruleset) error {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: rs.table}
	c.AddTable(t) // no-op if it exists; makes the delete below always valid
	c.DelTable(t)
	c.AddTable(t)
	enc := encoder{conn: c, table: t}
	for _, ch := range rs.chains {
		nch := c.AddChain(&nftables.Chain{
			Name:     ch.name,
			Table:    t,
			Type:     nftables.ChainType(ch.kind),
			Hooknum:  hookNum(ch.hook),
			Priority: nftables.ChainPriorityRef(nftables.ChainPriority(ch.priority)),
			Policy:   policyRef(ch.policy),
		})
		for _, r := range ch.rules {
			var udata []byte
			r = slices.DeleteFunc(slices.Clone(r), func(s stmt) bool {
				c, ok := s.(comment)
				if ok {
					udata = userdata.AppendString(udata, userdata.TypeComment, string(c))
				}
				return ok
			})
			exprs, err := enc.rule(r)
			if err != nil {
				return err
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: nch, Exprs: exprs, UserData: udata})
		}
	}
	return c.Flush()
}

// deleteTable removes the table if it is there, in one batch.
func deleteTable(c *nftables.Conn, name string) error {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	c.AddTable(t)
	c.DelTable(t)
	return c.Flush()
}

func hookNum(name string) *nftables.ChainHook {
	switch name {
	case "prerouting":
		return nftables.ChainHookPrerouting
	case "output":
		return nftables.ChainHookOutput
	}
	return nil
}

func policyRef(p string) *nftables.ChainPolicy {
	v := nftables.ChainPolicyAccept
	if p == "drop" {
		v = nftables.ChainPolicyDrop
	}
	return &v
}

// encoder turns statements into expressions, adding the anonymous sets they
// need to the same batch.
type encoder struct {
	conn  *nftables.Conn
	table *nftables.Table
	sets  uint32 // set IDs are per batch; set explicitly so google/nftables' global counter is not used
}

func (e *encoder) rule(r []stmt) ([]expr.Any, error) {
	var out []expr.Any
	for _, s := range r {
		exprs, err := e.stmt(s)
		if err != nil {
			return nil, err
		}
		out = append(out, exprs...)
	}
	return out, nil
}

func (e *encoder) stmt(s stmt) ([]expr.Any, error) {
	switch s := s.(type) {
	case matchIIFName:
		keys := make([][]byte, len(s.names))
		for i, n := range s.names {
			keys[i] = ifName(n)
		}
		return e.match(meta(expr.MetaKeyIIFNAME), nftables.TypeIFName, keys)
	case matchL4ProtoTCP:
		return e.match(meta(expr.MetaKeyL4PROTO), nftables.TypeInetProto, [][]byte{{unix.IPPROTO_TCP}})
	case matchNFProto:
		return e.match(meta(expr.MetaKeyNFPROTO), nftables.TypeNFProto, [][]byte{{nfproto(s.v6)}})
	case matchDaddr:
		return e.daddr(s)
	case matchDport:
		return e.dport(s)
	case matchMark:
		return e.match(meta(expr.MetaKeyMARK), nftables.TypeMark, [][]byte{native32(s.mark)})
	case matchSkuid:
		keys := make([][]byte, len(s.uids))
		for i, u := range s.uids {
			keys[i] = native32(u)
		}
		return e.match(meta(expr.MetaKeySKUID), nftables.TypeUID, keys)
	case matchSocketTransparent:
		return []expr.Any{
			&expr.Socket{Key: expr.SocketKeyTransparent, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
		}, nil
	case matchNotSYN:
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpFlagsFSRA}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{tcpFlagSYN}},
		}, nil
	case matchFibDaddrLocal:
		return []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(rtnLocal)},
		}, nil
	case setMark:
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: native32(s.mark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}, nil
	case tproxyTo:
		port := binary.BigEndian.AppendUint16(nil, s.port)
		tp := &expr.TProxy{Family: nfproto(s.v6), TableFamily: byte(nftables.TableFamilyINet), RegPort: 1}
		if !s.addr.IsValid() {
			return []expr.Any{&expr.Immediate{Register: 1, Data: port}, tp}, nil
		}
		tp.RegAddr, tp.RegPort = 1, 2
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: s.addr.AsSlice()},
			&expr.Immediate{Register: 2, Data: port},
			tp,
		}, nil
	case redirectTo:
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, s.port)},
			&expr.Redir{RegisterProtoMin: 1, RegisterProtoMax: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
		}, nil
	case verdict:
		kinds := map[verdict]expr.VerdictKind{"accept": expr.VerdictAccept, "return": expr.VerdictReturn, "drop": expr.VerdictDrop}
		if k, ok := kinds[s]; ok {
			return []expr.Any{&expr.Verdict{Kind: k}}, nil
		}
	}
	return nil, fmt.Errorf("intercept: cannot encode statement %q", stmtString(s))
}

// match loads a value and compares it with one key, or looks it up in an
// anonymous set when there are several, as nft does.
func (e *encoder) match(load expr.Any, typ nftables.SetDatatype, keys [][]byte) ([]expr.Any, error) {
	if len(keys) == 1 {
		return []expr.Any{load, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: keys[0]}}, nil
	}
	elems := make([]nftables.SetElement, len(keys))
	for i, k := range keys {
		elems[i] = nftables.SetElement{Key: k}
	}
	return e.lookup(load, &nftables.Set{KeyType: typ}, elems)
}

// dport matches ports as nft does: one port with a comparison, one range
// with two (>= first, <= last), several ports with a set, and ranges among
// several with an interval set.
func (e *encoder) dport(s matchDport) ([]expr.Any, error) {
	port := func(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }
	if len(s.ports) == 1 && s.ports[0].First != s.ports[0].Last {
		r := s.ports[0]
		return []expr.Any{payloadDport(),
			&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: port(r.First)},
			&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: port(r.Last)},
		}, nil
	}
	if !slices.ContainsFunc(s.ports, func(r PortRange) bool { return r.First != r.Last }) {
		keys := make([][]byte, len(s.ports))
		for i, r := range s.ports {
			keys[i] = port(r.First)
		}
		return e.match(payloadDport(), nftables.TypeInetService, keys)
	}
	var bounds []interval
	for _, r := range s.ports {
		b := interval{first: port(r.First)}
		if r.Last < 0xffff {
			b.end = port(r.Last + 1)
		}
		bounds = append(bounds, b)
	}
	return e.lookup(payloadDport(), &nftables.Set{KeyType: nftables.TypeInetService, Interval: true}, intervalElems(bounds))
}

// daddr matches destinations with an interval set.
func (e *encoder) daddr(s matchDaddr) ([]expr.Any, error) {
	typ, off, n := nftables.TypeIPAddr, uint32(16), uint32(4)
	if s.v6 {
		typ, off, n = nftables.TypeIP6Addr, 24, 16
	}
	var bounds []interval
	for _, r := range s.ranges {
		b := interval{first: r.first.AsSlice()}
		if end := r.last.Next(); end.IsValid() {
			b.end = end.AsSlice()
		}
		bounds = append(bounds, b)
	}
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
	return e.lookup(load, &nftables.Set{KeyType: typ, Interval: true}, intervalElems(bounds))
}

// interval is one range of an interval set, as big-endian keys: its first
// value and the value one past its last (nil: it runs to the maximum).
type interval struct{ first, end []byte }

// intervalElems lays sorted, disjoint ranges out as the kernel's interval
// sets hold them: each range is a start element and an end element one
// past it; a leading end element at zero closes the gap before the first.
func intervalElems(rs []interval) []nftables.SetElement {
	var elems []nftables.SetElement
	if len(rs) > 0 && slices.ContainsFunc(rs[0].first, func(b byte) bool { return b != 0 }) {
		elems = append(elems, nftables.SetElement{Key: make([]byte, len(rs[0].first)), IntervalEnd: true})
	}
	for _, r := range rs {
		elems = append(elems, nftables.SetElement{Key: r.first})
		if r.end != nil {
			elems = append(elems, nftables.SetElement{Key: r.end, IntervalEnd: true})
		}
	}
	return elems
}

func (e *encoder) lookup(load expr.Any, set *nftables.Set, elems []nftables.SetElement) ([]expr.Any, error) {
	e.sets++
	set.Table, set.ID, set.Name = e.table, e.sets, "__set%d"
	set.Anonymous, set.Constant = true, true
	if err := e.conn.AddSet(set, elems); err != nil {
		return nil, err
	}
	return []expr.Any{load, &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID}}, nil
}

func meta(k expr.MetaKey) *expr.Meta { return &expr.Meta{Key: k, Register: 1} }

// TCP flag bits: a first SYN has SYN set and FIN, RST and ACK clear.
const (
	tcpFlagSYN   = 0x02
	tcpFlagsFSRA = 0x01 | 0x02 | 0x04 | 0x10
)

func payloadDport() *expr.Payload {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
}

func nfproto(v6 bool) byte {
	if v6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

// native32 encodes meta values (mark, uid, fib type), which the kernel keeps
// in host byte order.
func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func ifName(name string) []byte {
	b := make([]byte, ifNameLen)
	copy(b, name)
	return b
}

// readTable reads the table back from the kernel. found is false when
// there is no such table.
//
// Tables, chains and sets come from google/nftables. Rules are dumped here:
// its GetRules (v0.3.0) silently drops the tproxy and socket expressions it
// cannot parse, and a Show that hid them would lie.
func readTable(c *nftables.Conn, fd int, name string) (rs ruleset, found bool, err error) {
	t, err := c.ListTableOfFamily(name, nftables.TableFamilyINet)
	if errors.Is(err, unix.ENOENT) {
		return ruleset{}, false, nil
	}
	if err != nil {
		return ruleset{}, false, err
	}
	rs.table = name
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return rs, true, err
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return rs, true, err
	}
	rules, err := dumpRules(fd, name)
	if err != nil {
		return rs, true, err
	}
	elems := func(set string) ([]nftables.SetElement, bool) {
		i := slices.IndexFunc(sets, func(s *nftables.Set) bool { return s.Name == set })
		if i < 0 {
			return nil, false
		}
		es, err := c.GetSetElements(sets[i])
		return es, err == nil
	}
	for _, ch := range chains {
		if ch.Table.Name != name {
			continue
		}
		out := chain{name: ch.Name, kind: string(ch.Type), policy: "accept"}
		if ch.Hooknum != nil && ch.Priority != nil {
			out.hook = hookName(*ch.Hooknum)
			out.priority = int32(*ch.Priority)
		}
		if ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
			out.policy = "drop"
		}
		for _, r := range rules {
			if r.chain == ch.Name {
				rule := decodeRule(r.exprs, elems)
				if c, ok := userdata.GetString(r.udata, userdata.TypeComment); ok {
					rule = append(rule, comment(c))
				}
				out.rules = append(out.rules, rule)
			}
		}
		rs.chains = append(rs.chains, out)
	}
	return rs, true, nil
}

func hookName(h nftables.ChainHook) string {
	names := map[nftables.ChainHook]string{
		*nftables.ChainHookPrerouting: "prerouting", *nftables.ChainHookInput: "input",
		*nftables.ChainHookForward: "forward", *nftables.ChainHookOutput: "output",
		*nftables.ChainHookPostrouting: "postrouting",
	}
	if n, ok := names[h]; ok {
		return n
	}
	return fmt.Sprintf("hook%d", h)
}

type dumpedRule struct {
	chain string
	exprs []expr.Any
	udata []byte // NFTA_RULE_USERDATA: nft's comment
}

// dumpRules lists the rules of an inet table, in chain and rule order.
func dumpRules(fd int, table string) ([]dumpedRule, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: fd})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: append([]byte(table), 0)}})
	if err != nil {
		return nil, err
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, err
	}
	var rules []dumpedRule
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		var r dumpedRule
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_CHAIN:
				r.chain = ad.String()
			case unix.NFTA_RULE_USERDATA:
				r.udata = ad.Bytes()
			case unix.NFTA_RULE_EXPRESSIONS:
				ad.Nested(func(nad *netlink.AttributeDecoder) error {
					for nad.Next() {
						nad.Nested(func(ead *netlink.AttributeDecoder) error {
							r.exprs = append(r.exprs, decodeExpr(ead))
							return nil
						})
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// opaque is an expression this package does not decode.
type opaque struct {
	expr.Any
	name string
}

// decodeExpr parses one NFTA_LIST_ELEM of a rule with google/nftables'
// decoders, plus tproxy, whose decoder in v0.3.0 reads the 32-bit family
// as 8 bits.
func decodeExpr(ad *netlink.AttributeDecoder) expr.Any {
	var name string
	var data []byte
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = ad.String()
		case unix.NFTA_EXPR_DATA:
			data = ad.Bytes()
		}
	}
	var e expr.Any
	switch name {
	case "meta":
		e = &expr.Meta{}
	case "cmp":
		e = &expr.Cmp{}
	case "bitwise":
		e = &expr.Bitwise{}
	case "payload":
		e = &expr.Payload{}
	case "lookup":
		e = &expr.Lookup{}
	case "immediate":
		e = &expr.Immediate{}
		// A verdict is an immediate into register 0.
		if err := expr.Unmarshal(byte(nftables.TableFamilyINet), data, e); err == nil && e.(*expr.Immediate).Register == unix.NFT_REG_VERDICT {
			e = &expr.Verdict{}
		}
	case "socket":
		e = &expr.Socket{}
	case "fib":
		e = &expr.Fib{}
	case "redir":
		e = &expr.Redir{}
	case "tproxy":
		return decodeTProxy(data)
	}
	if e == nil || expr.Unmarshal(byte(nftables.TableFamilyINet), data, e) != nil {
		return opaque{name: name}
	}
	return e
}

func decodeTProxy(data []byte) expr.Any {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return opaque{name: "tproxy"}
	}
	ad.ByteOrder = binary.BigEndian
	tp := &expr.TProxy{TableFamily: byte(nftables.TableFamilyINet)}
	for ad.Next() {
		switch ad.Type() {
		case expr.NFTA_TPROXY_FAMILY:
			tp.Family = byte(ad.Uint32())
		case expr.NFTA_TPROXY_REG_ADDR:
			tp.RegAddr = ad.Uint32()
		case expr.NFTA_TPROXY_REG_PORT:
			tp.RegPort = ad.Uint32()
		}
	}
	if ad.Err() != nil {
		return opaque{name: "tproxy"}
	}
	return tp
}

// decodeRule turns a rule's expressions back into statements, following
// what each register holds. Anything detour would not have installed comes
// out as an explicit unknown statement rather than being dropped.
func decodeRule(exprs []expr.Any, elems func(set string) ([]nftables.SetElement, bool)) []stmt {
	regs := map[uint32]string{} // register -> what was loaded ("tcp dport", ...)
	imms := map[uint32][]byte{} // register -> immediate data
	var out []stmt
	next := func(i int) expr.Any {
		if i+1 < len(exprs) {
			return exprs[i+1]
		}
		return nil
	}
	skip := false // the expression was decoded with the one before
	for i, e := range exprs {
		if skip {
			skip = false
			continue
		}
		switch e := e.(type) {
		case *expr.Meta:
			if !e.SourceRegister {
				regs[e.Register] = "meta " + metaName(e.Key)
			} else if d := imms[e.Register]; e.Key == expr.MetaKeyMARK && len(d) == 4 {
				out = append(out, setMark{binary.NativeEndian.Uint32(d)})
			} else {
				out = append(out, unknown("meta "+metaName(e.Key)+" set ?"))
			}
		case *expr.Payload:
			regs[e.DestRegister] = payloadName(e)
		case *expr.Bitwise:
			regs[e.DestRegister] = fmt.Sprintf("%s & 0x%x ^ 0x%x", regs[e.SourceRegister], e.Mask, e.Xor)
		case *expr.Socket:
			regs[e.Register] = fmt.Sprintf("socket key%d", e.Key)
			if e.Key == expr.SocketKeyTransparent {
				regs[e.Register] = "socket transparent"
			}
		case *expr.Fib:
			regs[e.Register] = "fib ?"
			if e.FlagDADDR && e.ResultADDRTYPE && !e.FlagSADDR && !e.FlagMARK && !e.FlagIIF && !e.FlagOIF {
				regs[e.Register] = "fib daddr type"
			}
		case *expr.Immediate:
			imms[e.Register] = e.Data
			regs[e.Register] = "immediate"
		case *expr.Cmp:
			// A port range is `>= first` then `<= last` on the port.
			if r, ok := portRangeCmp(regs[e.Register], e, next(i)); ok {
				out = append(out, matchDport{[]PortRange{r}})
				skip = true
				continue
			}
			out = append(out, decodeCmp(regs[e.Register], e))
		case *expr.Lookup:
			out = append(out, decodeLookup(regs[e.SourceRegister], e, elems))
		case *expr.TProxy:
			s := tproxyTo{v6: e.Family == unix.NFPROTO_IPV6}
			if d := imms[e.RegPort]; len(d) == 2 {
				s.port = binary.BigEndian.Uint16(d)
			}
			if e.RegAddr != 0 {
				s.addr, _ = netip.AddrFromSlice(imms[e.RegAddr])
			}
			out = append(out, s)
		case *expr.Redir:
			lo, hi := imms[e.RegisterProtoMin], imms[e.RegisterProtoMax]
			if len(lo) == 2 && slices.Equal(lo, hi) {
				out = append(out, redirectTo{binary.BigEndian.Uint16(lo)})
			} else {
				out = append(out, unknown("redirect"))
			}
		case *expr.Verdict:
			out = append(out, verdictOf(e))
		case opaque:
			out = append(out, unknown("<"+e.name+">"))
		default:
			out = append(out, unknown(fmt.Sprintf("<%T>", e)))
		}
	}
	return out
}

// portRangeCmp decodes `tcp dport FIRST-LAST` from its two comparisons.
func portRangeCmp(src string, gte *expr.Cmp, next expr.Any) (PortRange, bool) {
	lte, ok := next.(*expr.Cmp)
	if !ok || src != "tcp dport" || gte.Op != expr.CmpOpGte || lte.Op != expr.CmpOpLte ||
		lte.Register != gte.Register || len(gte.Data) != 2 || len(lte.Data) != 2 {
		return PortRange{}, false
	}
	return PortRange{binary.BigEndian.Uint16(gte.Data), binary.BigEndian.Uint16(lte.Data)}, true
}

func decodeCmp(src string, e *expr.Cmp) stmt {
	d := e.Data
	if e.Op == expr.CmpOpNeq && src == "tcp flags & 0x17 ^ 0x00" && len(d) == 1 && d[0] == tcpFlagSYN {
		return matchNotSYN{}
	}
	if e.Op != expr.CmpOpEq {
		return unknown(fmt.Sprintf("%s <op %d> 0x%x", src, e.Op, d))
	}
	switch {
	case src == "meta l4proto" && len(d) == 1 && d[0] == unix.IPPROTO_TCP:
		return matchL4ProtoTCP{}
	case src == "meta nfproto" && len(d) == 1 && (d[0] == unix.NFPROTO_IPV4 || d[0] == unix.NFPROTO_IPV6):
		return matchNFProto{d[0] == unix.NFPROTO_IPV6}
	case src == "meta iifname":
		return matchIIFName{[]string{strings.TrimRight(string(d), "\x00")}}
	case src == "meta mark" && len(d) == 4:
		return matchMark{binary.NativeEndian.Uint32(d)}
	case src == "meta skuid" && len(d) == 4:
		return matchSkuid{[]uint32{binary.NativeEndian.Uint32(d)}}
	case src == "tcp dport" && len(d) == 2:
		return matchDport{PortList(binary.BigEndian.Uint16(d))}
	case src == "socket transparent" && len(d) == 1 && d[0] == 1:
		return matchSocketTransparent{}
	case src == "fib daddr type" && len(d) == 4 && binary.NativeEndian.Uint32(d) == rtnLocal:
		return matchFibDaddrLocal{}
	}
	return unknown(fmt.Sprintf("%s 0x%x", src, d))
}

func decodeLookup(src string, e *expr.Lookup, elems func(string) ([]nftables.SetElement, bool)) stmt {
	es, ok := elems(e.SetName)
	if !ok || e.Invert || e.IsDestRegSet {
		return unknown(fmt.Sprintf("%s @%s", src, e.SetName))
	}
	switch src {
	case "meta iifname":
		var s matchIIFName
		for _, el := range es {
			s.names = append(s.names, strings.TrimRight(string(el.Key), "\x00"))
		}
		return s
	case "tcp dport":
		if slices.ContainsFunc(es, func(el nftables.SetElement) bool { return el.IntervalEnd }) {
			return matchDport{portIntervals(es)}
		}
		var s matchDport
		for _, el := range es {
			if len(el.Key) == 2 {
				s.ports = append(s.ports, PortRange{binary.BigEndian.Uint16(el.Key), binary.BigEndian.Uint16(el.Key)})
			}
		}
		return s
	case "meta skuid":
		var s matchSkuid
		for _, el := range es {
			if len(el.Key) == 4 {
				s.uids = append(s.uids, binary.NativeEndian.Uint32(el.Key))
			}
		}
		return s
	case "ip daddr", "ip6 daddr":
		return matchDaddr{v6: src == "ip6 daddr", ranges: intervals(es)}
	}
	return unknown(fmt.Sprintf("%s @%s", src, e.SetName))
}

// intervals rebuilds address ranges from interval set elements.
func intervals(es []nftables.SetElement) []addrRange {
	var out []addrRange
	for _, iv := range intervalsOf(es) {
		first, ok := netip.AddrFromSlice(iv.first)
		if !ok {
			continue
		}
		last := fullRange(first.Is6()).last
		if end, ok := netip.AddrFromSlice(iv.end); ok {
			last = end.Prev()
		}
		out = append(out, addrRange{first, last})
	}
	return out
}

// portIntervals rebuilds port ranges from interval set elements.
func portIntervals(es []nftables.SetElement) []PortRange {
	var out []PortRange
	for _, iv := range intervalsOf(es) {
		if len(iv.first) != 2 {
			continue
		}
		r := PortRange{binary.BigEndian.Uint16(iv.first), 0xffff}
		if len(iv.end) == 2 {
			r.Last = binary.BigEndian.Uint16(iv.end) - 1
		}
		out = append(out, r)
	}
	return out
}

// intervalsOf pairs interval set elements into ranges: sorted by key, a
// start element opens a range and the next end element (one past the
// range) closes it; a range left open runs to the maximum (end nil).
func intervalsOf(es []nftables.SetElement) []interval {
	sorted := slices.Clone(es)
	slices.SortFunc(sorted, func(a, b nftables.SetElement) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		if a.IntervalEnd == b.IntervalEnd {
			return 0
		}
		if a.IntervalEnd {
			return -1 // a range ending here closes before one starting here
		}
		return 1
	})
	var out []interval
	var open []byte
	for _, e := range sorted {
		switch {
		case !e.IntervalEnd:
			if open == nil {
				open = e.Key
			}
		case open != nil:
			out = append(out, interval{open, e.Key})
			open = nil
		}
	}
	if open != nil {
		out = append(out, interval{open, nil})
	}
	return out
}

func metaName(k expr.MetaKey) string {
	names := map[expr.MetaKey]string{
		expr.MetaKeyL4PROTO: "l4proto", expr.MetaKeyNFPROTO: "nfproto", expr.MetaKeyIIFNAME: "iifname",
		expr.MetaKeyMARK: "mark", expr.MetaKeySKUID: "skuid",
	}
	if n, ok := names[k]; ok {
		return n
	}
	return fmt.Sprintf("key%d", k)
}

func payloadName(p *expr.Payload) string {
	switch {
	case p.Base == expr.PayloadBaseTransportHeader && p.Offset == 2 && p.Len == 2:
		return "tcp dport"
	case p.Base == expr.PayloadBaseTransportHeader && p.Offset == 13 && p.Len == 1:
		return "tcp flags"
	case p.Base == expr.PayloadBaseNetworkHeader && p.Offset == 16 && p.Len == 4:
		return "ip daddr"
	case p.Base == expr.PayloadBaseNetworkHeader && p.Offset == 24 && p.Len == 16:
		return "ip6 daddr"
	}
	return fmt.Sprintf("payload base%d+%d/%d", p.Base, p.Offset, p.Len)
}

func verdictOf(v *expr.Verdict) stmt {
	switch v.Kind {
	case expr.VerdictAccept:
		return verdict("accept")
	case expr.VerdictDrop:
		return verdict("drop")
	case expr.VerdictReturn:
		return verdict("return")
	case expr.VerdictContinue:
		return verdict("continue")
	case expr.VerdictJump:
		return verdict("jump " + v.Chain)
	case expr.VerdictGoto:
		return verdict("goto " + v.Chain)
	}
	return unknown(fmt.Sprintf("<verdict %d>", v.Kind))
}
