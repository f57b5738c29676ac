package config

import (
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// Marshal renders the effective configuration, for the admin endpoint,
// as YAML that Parse reads back as the same configuration. It writes what
// yaml.Marshal writes, except that a string with a control character is
// double-quoted, with escapes: yaml.Marshal writes some as block scalars,
// which turn a CR into a line break and, with a tab at a line's start, do
// not parse. (yaml.Node's Encode goes through that text too, so the node
// tree is built here.)
func (c *Config) Marshal() ([]byte, error) {
	n, err := toNode(reflect.ValueOf(c).Elem())
	if err != nil {
		return nil, err
	}
	return yaml.Marshal(n)
}

func toNode(v reflect.Value) (*yaml.Node, error) {
	if m, ok := v.Interface().(yaml.Marshaler); ok { // Duration, Mark, PortRange
		x, err := m.MarshalYAML()
		if err != nil {
			return nil, err
		}
		if n, ok := x.(*yaml.Node); ok {
			return n, nil
		}
		v = reflect.ValueOf(x)
	}
	switch v.Kind() {
	case reflect.String:
		if s := v.String(); strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s, Style: yaml.DoubleQuotedStyle}, nil
		}
	case reflect.Struct:
		n := &yaml.Node{Kind: yaml.MappingNode}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name := f.Tag.Get("yaml")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			fv, err := toNode(v.Field(i))
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: name}, fv)
		}
		return n, nil
	case reflect.Slice:
		n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		if v.Len() == 0 {
			n.Style = yaml.FlowStyle // [], as yaml.Marshal writes it
		}
		for i := range v.Len() {
			e, err := toNode(v.Index(i))
			if err != nil {
				return nil, err
			}
			n.Content = append(n.Content, e)
		}
		return n, nil
	}
	// Numbers, booleans and strings without control characters: as
	// yaml.Marshal writes them (quoted where YAML 1.1 would read another
	// type, as "off").
	n := &yaml.Node{}
	return n, n.Encode(v.Interface())
}
