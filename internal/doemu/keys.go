package doemu

import (
	"crypto/md5"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

func keyJSON(k *Key) map[string]any {
	return map[string]any{
		"id":          k.ID,
		"fingerprint": k.Fingerprint,
		"public_key":  k.PublicKey,
		"name":        k.Name,
	}
}

// fingerprintMD5 is DigitalOcean's key fingerprint: the MD5 of the key in
// colon-separated hex.
func fingerprintMD5(pub ssh.PublicKey) string {
	sum := md5.Sum(pub.Marshal())
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02x", b)
	}
	return strings.Join(parts, ":")
}

// keyByRef finds a key by ID or fingerprint. Call with mu held.
func (e *Emulator) keyByRef(ref string) *Key {
	if id, err := strconv.Atoi(ref); err == nil {
		return e.keys[id]
	}
	for _, k := range e.keys {
		if k.Fingerprint == ref {
			return k
		}
	}
	return nil
}

func (e *Emulator) listKeys(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ks := make([]*Key, 0, len(e.keys))
	for _, k := range e.keys {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i].ID < ks[j].ID })
	out := make([]any, 0, len(ks))
	for _, k := range ks {
		out = append(out, keyJSON(k))
	}
	return e.paginate(r, "ssh_keys", out)
}

func (e *Emulator) getKey(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := e.keyByRef(r.param("key"))
	if k == nil {
		return reply{}, errNotFound()
	}
	return reply{http.StatusOK, map[string]any{"ssh_key": keyJSON(k)}}, nil
}

type keyRequest struct {
	Name      string `json:"name"`
	PublicKey string `json:"public_key"`
}

func (e *Emulator) createKey(r *request) (reply, error) {
	var req keyRequest
	if err := r.decode(&req); err != nil {
		return reply{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	k, err := e.newKey(req)
	if err != nil {
		return reply{}, err
	}
	return reply{http.StatusCreated, map[string]any{"ssh_key": keyJSON(k)}}, nil
}

// newKey validates and records an account key. Call with mu held.
func (e *Emulator) newKey(req keyRequest) (*Key, error) {
	if strings.TrimSpace(req.Name) == "" {
		return nil, errUnprocessable("Name can't be blank")
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.PublicKey))
	if err != nil {
		return nil, errUnprocessable("Key invalid, key should be of the format `type key [comment]`")
	}
	fp := fingerprintMD5(pub)
	for _, k := range e.keys {
		if k.Fingerprint == fp {
			return nil, errUnprocessable("SSH Key is already in use on your account")
		}
	}
	k := &Key{ID: e.newID(40000000), Name: req.Name, Fingerprint: fp, PublicKey: strings.TrimSpace(req.PublicKey)}
	e.keys[k.ID] = k
	return k, nil
}

func (e *Emulator) updateKey(r *request) (reply, error) {
	var req keyRequest
	if err := r.decode(&req); err != nil {
		return reply{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	k := e.keyByRef(r.param("key"))
	if k == nil {
		return reply{}, errNotFound()
	}
	if strings.TrimSpace(req.Name) == "" {
		return reply{}, errUnprocessable("Name can't be blank")
	}
	k.Name = req.Name
	return reply{http.StatusOK, map[string]any{"ssh_key": keyJSON(k)}}, nil
}

func (e *Emulator) deleteKey(r *request) (reply, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := e.keyByRef(r.param("key"))
	if k == nil {
		return reply{}, errNotFound()
	}
	delete(e.keys, k.ID)
	return reply{http.StatusNoContent, nil}, nil
}
