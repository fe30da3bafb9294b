package opsconfig

import (
	"fmt"
	"maps"
	"slices"
)

// Caps bound the instances one stack runs at once (the `caps` section). Zero means no
// cap. The provisioner reserves a fleet's instances and vCPUs against them in the ledger
// before it launches, and the reaper releases them once the fleet is terminated; a job
// that does not fit waits, and is rejected once it can no longer meet its deadline.
type Caps struct {
	MaxInstances int `yaml:"max_instances"` // instances of the stack at once
	MaxVCPUs     int `yaml:"max_vcpus"`     // vCPUs of the stack at once (needs VCPUs)
	// VCPUs per instance type; with MaxVCPUs set, every template's types must be listed.
	VCPUs map[string]int `yaml:"vcpus"`
	// Templates caps each named template's instances at once.
	Templates map[string]int `yaml:"templates"`
}

// Any says whether any cap is set.
func (c Caps) Any() bool {
	if c.MaxInstances > 0 || c.MaxVCPUs > 0 {
		return true
	}
	for _, n := range c.Templates {
		if n > 0 {
			return true
		}
	}
	return false
}

// FleetVCPUs is the vCPUs a fleet of count instances of template t may need: the largest
// of its types, since the capacity fallback may launch any of them.
func (c Caps) FleetVCPUs(t Template, count int) int {
	most := 0
	for _, it := range t.InstanceTypes {
		most = max(most, c.VCPUs[it])
	}
	return most * count
}

func (c Caps) validate(p *problems, templates map[string]Template) {
	if c.MaxInstances < 0 {
		p.add("caps.max_instances", "must be >= 0, got %d", c.MaxInstances)
	}
	if c.MaxVCPUs < 0 {
		p.add("caps.max_vcpus", "must be >= 0, got %d", c.MaxVCPUs)
	}
	for _, it := range slices.Sorted(maps.Keys(c.VCPUs)) {
		if n := c.VCPUs[it]; n < 1 {
			p.add("caps.vcpus."+it, "must be >= 1, got %d", n)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.Templates)) {
		if _, ok := templates[name]; !ok {
			p.add("caps.templates."+name, "names no template")
		}
		if n := c.Templates[name]; n < 0 {
			p.add("caps.templates."+name, "must be >= 0, got %d", n)
		}
	}
	if c.MaxVCPUs > 0 {
		for _, name := range slices.Sorted(maps.Keys(templates)) {
			for _, it := range templates[name].InstanceTypes {
				if c.VCPUs[it] == 0 {
					p.add("caps.vcpus", "%s (of template %s) is not listed: max_vcpus needs the vCPUs of every type", it, name)
				}
			}
		}
	}
}

// String summarises the caps for logs.
func (c Caps) String() string {
	return fmt.Sprintf("max_instances=%d max_vcpus=%d templates=%v", c.MaxInstances, c.MaxVCPUs, c.Templates)
}
