package cloud

import (
	"fmt"
	"io"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/digitalocean/godo"
)

// DigitalOcean's list prices used for --dry-run estimates (docs/COSTS.md).
// Droplet prices come from /v2/sizes.
const (
	VolumePricePerGiBMonth   = 0.10
	SnapshotPricePerGiBMonth = 0.06
	HoursPerMonth            = 672 // DigitalOcean caps hourly billing at 672 hours a month
)

// knownRegions returns an *InputError for the first of regions in which
// DigitalOcean offers no droplet size at all: a region that does not exist
// (a typo in the config would otherwise select nothing, or silently less).
func knownRegions(sizes []godo.Size, regions []string) error {
	for _, r := range regions {
		if !knownRegion(sizes, r) {
			return &InputError{fmt.Errorf("unknown region %q in the config: DigitalOcean offers no droplet there", r)}
		}
	}
	return nil
}

// knownRegion reports whether some size, available or not, lists region.
func knownRegion(sizes []godo.Size, region string) bool {
	return slices.ContainsFunc(sizes, func(s godo.Size) bool { return slices.Contains(s.Regions, region) })
}

// Filter selects volumes.
type Filter struct {
	Regions     []string // empty: all
	Include     []string // name globs; empty: all
	Exclude     []string
	IncludeTags []string // empty: all
	ExcludeTags []string
}

// Selects reports whether f selects v. A volume of dosvob's own (both
// marks) is never selected.
func (f Filter) Selects(v godo.Volume) bool {
	if IsOurs(v.Name, v.Tags) {
		return false
	}
	if len(f.Regions) > 0 && (v.Region == nil || !slices.Contains(f.Regions, v.Region.Slug)) {
		return false
	}
	match := func(globs []string) bool {
		for _, g := range globs {
			if ok, _ := path.Match(g, v.Name); ok {
				return true
			}
		}
		return false
	}
	tagged := func(tags []string) bool {
		for _, t := range tags {
			if HasTag(v.Tags, t) {
				return true
			}
		}
		return false
	}
	if len(f.Include) > 0 && !match(f.Include) {
		return false
	}
	if len(f.IncludeTags) > 0 && !tagged(f.IncludeTags) {
		return false
	}
	return !match(f.Exclude) && !tagged(f.ExcludeTags)
}

// Plan is what a provision will create.
type Plan struct {
	Regions []RegionPlan
	// Hours is the run length the estimate assumes.
	Hours float64
	// Restore: the volumes are new, kept volumes to fill; no snapshot is
	// made.
	Restore bool
}

// RegionPlan is the part of a plan in one region.
type RegionPlan struct {
	Region      string
	Size        godo.Size
	Droplets    int
	Volumes     []godo.Volume
	DropletCost float64
	VolumeCost  float64
	SnapCost    float64
}

// Total is the estimated cost of the run in USD.
func (p *Plan) Total() float64 {
	t := 0.0
	for _, r := range p.Regions {
		t += r.DropletCost + r.VolumeCost + r.SnapCost
	}
	return t
}

// VolumeCount is the number of selected volumes.
func (p *Plan) VolumeCount() int {
	n := 0
	for _, r := range p.Regions {
		n += len(r.Volumes)
	}
	return n
}

// InputError is a value the user gave (a droplet size, a region) that
// DigitalOcean does not offer, found once the API answered: a usage error
// (exit 2), not a failure of the API.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// ChooseSize returns the size to use in region: want if given (it must be
// offered there), else the cheapest available size the region offers. A
// want that is not offered, or a region that no size lists (not a
// DigitalOcean region), is an *InputError.
func ChooseSize(sizes []godo.Size, region, want string) (godo.Size, error) {
	if !knownRegion(sizes, region) {
		return godo.Size{}, &InputError{fmt.Errorf("unknown region %q: DigitalOcean offers no droplet there", region)}
	}
	var best *godo.Size
	for i := range sizes {
		s := &sizes[i]
		if !s.Available || !slices.Contains(s.Regions, region) {
			continue
		}
		if want != "" {
			if s.Slug == want {
				return *s, nil
			}
			continue
		}
		if best == nil || s.PriceHourly < best.PriceHourly || (s.PriceHourly == best.PriceHourly && s.Slug < best.Slug) {
			best = s
		}
	}
	if want != "" {
		return godo.Size{}, &InputError{fmt.Errorf("droplet size %q is not available in region %q", want, region)}
	}
	if best == nil {
		return godo.Size{}, fmt.Errorf("region %q offers no droplet size", region)
	}
	return *best, nil
}

// MakePlan groups the selected volumes by region, picks each region's
// droplet size and count, and estimates the cost of a run of hours.
// Snapshots live only until their copy exists: they are priced for one
// hour, at their full size (an upper bound: DigitalOcean bills a
// snapshot's used data).
func MakePlan(vols []godo.Volume, sizes []godo.Size, dropletSize string, hours float64) (*Plan, error) {
	return makePlan(vols, sizes, dropletSize, hours, false)
}

// MakeRestorePlan is MakePlan for a restore: vols are the new volumes to
// fill, which the run creates empty and keeps (priced for the run only:
// after it they are the user's), and no snapshot is made.
func MakeRestorePlan(vols []godo.Volume, sizes []godo.Size, dropletSize string, hours float64) (*Plan, error) {
	return makePlan(vols, sizes, dropletSize, hours, true)
}

func makePlan(vols []godo.Volume, sizes []godo.Size, dropletSize string, hours float64, restore bool) (*Plan, error) {
	by := map[string][]godo.Volume{}
	for _, v := range vols {
		by[v.Region.Slug] = append(by[v.Region.Slug], v)
	}
	regions := make([]string, 0, len(by))
	for r := range by {
		regions = append(regions, r)
	}
	sort.Strings(regions)
	p := &Plan{Hours: hours, Restore: restore}
	for _, r := range regions {
		vs := by[r]
		sort.Slice(vs, func(i, j int) bool { return vs[i].Name < vs[j].Name })
		size, err := ChooseSize(sizes, r, dropletSize)
		if err != nil {
			return nil, err
		}
		rp := RegionPlan{Region: r, Size: size, Volumes: vs, Droplets: (len(vs) + MaxVolumesPerDroplet - 1) / MaxVolumesPerDroplet}
		billed := max(hours, 1)
		rp.DropletCost = float64(rp.Droplets) * size.PriceHourly * billed
		for _, v := range vs {
			rp.VolumeCost += float64(v.SizeGigaBytes) * VolumePricePerGiBMonth / HoursPerMonth * billed
			if !restore {
				rp.SnapCost += float64(v.SizeGigaBytes) * SnapshotPricePerGiBMonth / HoursPerMonth
			}
		}
		p.Regions = append(p.Regions, rp)
	}
	return p, nil
}

// Print writes the plan for a person to read.
func (p *Plan) Print(w io.Writer) {
	fmt.Fprintf(w, "plan: %d volume(s) in %d region(s)\n", p.VolumeCount(), len(p.Regions))
	for _, r := range p.Regions {
		fmt.Fprintf(w, "\nregion %s: %d droplet(s) of size %s ($%.5f/hour), 1 SSH key per run\n", r.Region, r.Droplets, r.Size.Slug, r.Size.PriceHourly)
		for _, v := range r.Volumes {
			if p.Restore {
				fmt.Fprintf(w, "  volume %-30s %5d GiB  -> a new, empty volume, filled from the image and kept (no snapshot)\n", v.Name, v.SizeGigaBytes)
				continue
			}
			fmt.Fprintf(w, "  volume %-30s %5d GiB  -> snapshot, then a temporary copy of %d GiB\n", v.Name, v.SizeGigaBytes, v.SizeGigaBytes)
		}
	}
	var d, v, s float64
	for _, r := range p.Regions {
		d += r.DropletCost
		v += r.VolumeCost
		s += r.SnapCost
	}
	fmt.Fprintf(w, "\nestimated cost of a %s-hour run (DigitalOcean list prices, USD):\n", trimFloat(p.Hours))
	if p.Restore {
		fmt.Fprintf(w, "  droplets   $%.4f\n  volumes    $%.4f  ($%.2f/GiB-month, for the run; then billed to you until you delete them)\n  total      $%.4f\n",
			d, v, VolumePricePerGiBMonth, p.Total())
		return
	}
	fmt.Fprintf(w, "  droplets   $%.4f\n  volumes    $%.4f  ($%.2f/GiB-month)\n  snapshots  $%.4f  ($%.2f/GiB-month, about one hour each)\n  total      $%.4f\n",
		d, v, VolumePricePerGiBMonth, s, SnapshotPricePerGiBMonth, p.Total())
}

func trimFloat(f float64) string {
	s := fmt.Sprintf("%.2f", f)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}
