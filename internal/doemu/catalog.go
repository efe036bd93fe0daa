package doemu

import (
	"net/http"
	"time"
)

// Region is a DigitalOcean region. Sizes lists the size slugs offered there;
// when a seed leaves it empty it is derived from the sizes' regions.
type Region struct {
	Slug      string   `yaml:"slug" json:"slug"`
	Name      string   `yaml:"name" json:"name"`
	Available *bool    `yaml:"available,omitempty" json:"available,omitempty"`
	Sizes     []string `yaml:"sizes,omitempty" json:"sizes,omitempty"`
}

// Size is a droplet size with its prices in US dollars.
type Size struct {
	Slug         string   `yaml:"slug" json:"slug"`
	Memory       int      `yaml:"memory" json:"memory"` // MiB
	VCPUs        int      `yaml:"vcpus" json:"vcpus"`
	Disk         int      `yaml:"disk" json:"disk"` // GB
	Transfer     float64  `yaml:"transfer" json:"transfer"`
	PriceMonthly float64  `yaml:"price_monthly" json:"price_monthly"`
	PriceHourly  float64  `yaml:"price_hourly" json:"price_hourly"`
	Regions      []string `yaml:"regions" json:"regions"`
	Description  string   `yaml:"description,omitempty" json:"description,omitempty"`
}

// Image is a droplet image a droplet can be created from.
type Image struct {
	ID            int     `yaml:"id" json:"id"`
	Slug          string  `yaml:"slug" json:"slug"`
	Name          string  `yaml:"name" json:"name"`
	Distribution  string  `yaml:"distribution" json:"distribution"`
	MinDiskSize   int     `yaml:"min_disk_size" json:"min_disk_size"`
	SizeGigabytes float64 `yaml:"size_gigabytes" json:"size_gigabytes"`
}

// AccountInfo is what /v2/account reports.
type AccountInfo struct {
	Email        string `yaml:"email" json:"email"`
	UUID         string `yaml:"uuid" json:"uuid"`
	DropletLimit int    `yaml:"droplet_limit" json:"droplet_limit"`
	VolumeLimit  int    `yaml:"volume_limit" json:"volume_limit"`
}

var regionFeatures = []string{"backups", "ipv6", "metadata", "storage", "image_transfer"}

// DefaultRegions are used when a seed names none.
func DefaultRegions() []Region {
	return []Region{
		{Slug: "nyc1", Name: "New York 1"},
		{Slug: "nyc3", Name: "New York 3"},
		{Slug: "ams3", Name: "Amsterdam 3"},
		{Slug: "fra1", Name: "Frankfurt 1"},
		{Slug: "sfo3", Name: "San Francisco 3"},
	}
}

// DefaultSizes are used when a seed names none: DigitalOcean's smallest
// basic droplets with their list prices. The $4 size is not offered in
// every region, as on DigitalOcean.
func DefaultSizes() []Size {
	all := []string{"nyc1", "nyc3", "ams3", "fra1", "sfo3"}
	return []Size{
		{Slug: "s-1vcpu-512mb-10gb", Memory: 512, VCPUs: 1, Disk: 10, Transfer: 0.5, PriceMonthly: 4, PriceHourly: 0.00595, Regions: []string{"nyc1", "fra1", "sfo3"}, Description: "Basic"},
		{Slug: "s-1vcpu-1gb", Memory: 1024, VCPUs: 1, Disk: 25, Transfer: 1, PriceMonthly: 6, PriceHourly: 0.00893, Regions: all, Description: "Basic"},
		{Slug: "s-1vcpu-2gb", Memory: 2048, VCPUs: 1, Disk: 50, Transfer: 2, PriceMonthly: 12, PriceHourly: 0.01786, Regions: all, Description: "Basic"},
		{Slug: "s-2vcpu-2gb", Memory: 2048, VCPUs: 2, Disk: 60, Transfer: 3, PriceMonthly: 18, PriceHourly: 0.02679, Regions: all, Description: "Basic"},
		{Slug: "s-2vcpu-4gb", Memory: 4096, VCPUs: 2, Disk: 80, Transfer: 4, PriceMonthly: 24, PriceHourly: 0.03571, Regions: all, Description: "Basic"},
	}
}

// DefaultImages are used when a seed names none.
func DefaultImages() []Image {
	return []Image{
		{ID: 160000024, Slug: "ubuntu-24-04-x64", Name: "24.04 (LTS) x64", Distribution: "Ubuntu", MinDiskSize: 7, SizeGigabytes: 2.36},
		{ID: 160000022, Slug: "ubuntu-22-04-x64", Name: "22.04 (LTS) x64", Distribution: "Ubuntu", MinDiskSize: 7, SizeGigabytes: 2.2},
	}
}

func (e *Emulator) region(slug string) *Region {
	for i := range e.regions {
		if e.regions[i].Slug == slug {
			return &e.regions[i]
		}
	}
	return nil
}

func (e *Emulator) size(slug string) *Size {
	for i := range e.sizes {
		if e.sizes[i].Slug == slug {
			return &e.sizes[i]
		}
	}
	return nil
}

func (e *Emulator) image(slugOrID string) *Image {
	for i := range e.images {
		im := &e.images[i]
		if im.Slug == slugOrID || itoa(im.ID) == slugOrID {
			return im
		}
	}
	return nil
}

// regionJSON renders a region as the API does. Call with mu held.
func (e *Emulator) regionJSON(slug string) map[string]any {
	r := e.region(slug)
	if r == nil {
		return map[string]any{"slug": slug, "name": slug, "features": regionFeatures, "available": false, "sizes": []string{}}
	}
	sizes := r.Sizes
	if sizes == nil {
		sizes = []string{}
	}
	return map[string]any{
		"slug":      r.Slug,
		"name":      r.Name,
		"features":  regionFeatures,
		"available": r.Available == nil || *r.Available,
		"sizes":     sizes,
	}
}

func sizeJSON(s *Size) map[string]any {
	regions := s.Regions
	if regions == nil {
		regions = []string{}
	}
	desc := s.Description
	if desc == "" {
		desc = "Basic"
	}
	return map[string]any{
		"slug":          s.Slug,
		"memory":        s.Memory,
		"vcpus":         s.VCPUs,
		"disk":          s.Disk,
		"transfer":      s.Transfer,
		"price_monthly": s.PriceMonthly,
		"price_hourly":  s.PriceHourly,
		"regions":       regions,
		"available":     true,
		"description":   desc,
	}
}

func (e *Emulator) imageJSON(im *Image) map[string]any {
	regions := make([]string, 0, len(e.regions))
	for _, r := range e.regions {
		regions = append(regions, r.Slug)
	}
	return map[string]any{
		"id":             im.ID,
		"name":           im.Name,
		"type":           "base",
		"distribution":   im.Distribution,
		"slug":           im.Slug,
		"public":         true,
		"regions":        regions,
		"created_at":     "2024-04-25T00:00:00Z",
		"min_disk_size":  im.MinDiskSize,
		"size_gigabytes": im.SizeGigabytes,
		"description":    im.Distribution + " " + im.Name,
		"tags":           []string{},
		"status":         "available",
	}
}

func (e *Emulator) listRegions(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]any, 0, len(e.regions))
	for _, rg := range e.regions {
		out = append(out, e.regionJSON(rg.Slug))
	}
	return e.paginate(r, "regions", out)
}

func (e *Emulator) listSizes(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]any, 0, len(e.sizes))
	for i := range e.sizes {
		out = append(out, sizeJSON(&e.sizes[i]))
	}
	return e.paginate(r, "sizes", out)
}

func (e *Emulator) getAccount(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	a := e.account
	return reply{http.StatusOK, map[string]any{"account": map[string]any{
		"droplet_limit":     a.DropletLimit,
		"floating_ip_limit": 3,
		"volume_limit":      a.VolumeLimit,
		"email":             a.Email,
		"uuid":              a.UUID,
		"email_verified":    true,
		"status":            "active",
		"status_message":    "",
	}}}, nil
}

func timeJSON(t time.Time) string { return t.UTC().Format(time.RFC3339) }
