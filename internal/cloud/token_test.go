package cloud

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// TestTokenNotSentOnRedirect: the API token goes only to the API's own
// host. A redirect to another host (a misconfigured proxy, a hostile
// api_url) reaches it without the token.
func TestTokenNotSentOnRedirect(t *testing.T) {
	const token = "dop_v1_secret-token-123"
	var leaked atomic.Bool
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			leaked.Store(true)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"account": {"email": "x@example.com", "status": "active"}}`))
	}))
	defer other.Close()
	var sawToken atomic.Bool
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawToken.Store(r.Header.Get("Authorization") == "Bearer "+token)
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusFound)
	}))
	defer api.Close()

	a, err := NewAPI(APIOptions{BaseURL: api.URL, Token: token, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Godo().Account.Get(context.Background()); err != nil {
		t.Fatalf("account through the redirect: %v", err)
	}
	if !sawToken.Load() {
		t.Fatal("the API's own host got no token")
	}
	if leaked.Load() {
		t.Fatal("the token was sent to the host the API redirected to")
	}
}
