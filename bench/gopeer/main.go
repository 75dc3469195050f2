// Command gopeer is the Go peer of the receiver benchmark (bench/receiver_bench.py), not part
// of the product: a net/http server doing what `retrieve receiver` does before it answers —
// sender IP in a CIDR whitelist (403), body size limit (413), JSON validity (400) — and then
// either enqueues the body with asynq (-mode asynq, the queue library Convoy uses) or appends
// it with one XADD (-mode xadd), answering {"result": true, "error": ""} once Redis acknowledged.
// Run it with GOMAXPROCS=1 to compare one core with one event loop.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

var (
	answerOK          = []byte(`{"result": true, "error": ""}`)
	answerUnavailable = []byte(`{"result": false, "error": "Queue unavailable, retry later"}`)
)

type peer struct {
	allowed  []*net.IPNet
	maxBody  int64
	enqueue  func(ctx context.Context, id string, body []byte) error
	tooLarge []byte
}

func (p *peer) admitted(remoteAddr string) (string, bool) {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return remoteAddr, false
	}
	ip := net.ParseIP(host)
	for _, network := range p.allowed {
		if ip != nil && network.Contains(ip) {
			return host, true
		}
	}
	return host, false
}

func answer(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func failure(w http.ResponseWriter, status int, message string) {
	body, _ := json.Marshal(map[string]any{"result": false, "error": message})
	answer(w, status, body)
}

func (p *peer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if host, ok := p.admitted(r.RemoteAddr); !ok {
		failure(w, http.StatusForbidden, fmt.Sprintf("This domain/IP (%s) isn't authorized on Retrieve", host))
		return
	}
	id, found := strings.CutPrefix(r.URL.Path, "/integration/")
	if !found || id == "" || strings.Contains(id, "/") {
		failure(w, http.StatusNotFound, fmt.Sprintf("Integration %s not found", id))
		return
	}
	if r.Method != http.MethodPost {
		failure(w, http.StatusMethodNotAllowed, "Method not allowed")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, p.maxBody))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		answer(w, http.StatusRequestEntityTooLarge, p.tooLarge)
		return
	}
	if err != nil {
		failure(w, http.StatusBadRequest, "Invalid JSON payload: "+err.Error())
		return
	}
	if !json.Valid(body) {
		failure(w, http.StatusBadRequest, "Invalid JSON payload: not JSON")
		return
	}
	if err := p.enqueue(r.Context(), id, body); err != nil {
		answer(w, http.StatusServiceUnavailable, answerUnavailable)
		return
	}
	answer(w, http.StatusOK, answerOK)
}

func main() {
	mode := flag.String("mode", "xadd", "asynq: enqueue an asynq task; xadd: one XADD a request")
	listen := flag.String("listen", "127.0.0.1:8090", "address to serve on")
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis host:port")
	allowed := flag.String("allow", "127.0.0.0/8", "comma-separated CIDRs admitted")
	maxBody := flag.Int64("max-body", 1<<20, "body limit in bytes")
	flag.Parse()

	p := &peer{maxBody: *maxBody}
	p.tooLarge, _ = json.Marshal(map[string]any{
		"result": false, "error": fmt.Sprintf("Payload too large (limit %d bytes)", *maxBody),
	})
	for _, cidr := range strings.Split(*allowed, ",") {
		_, network, err := net.ParseCIDR(strings.TrimSpace(cidr))
		if err != nil {
			log.Fatalf("-allow: %v", err)
		}
		p.allowed = append(p.allowed, network)
	}
	switch *mode {
	case "asynq":
		client := asynq.NewClient(asynq.RedisClientOpt{Addr: *redisAddr})
		defer client.Close()
		p.enqueue = func(ctx context.Context, id string, body []byte) error {
			_, err := client.EnqueueContext(ctx, asynq.NewTask("webhook:"+id, body))
			return err
		}
	case "xadd":
		rdb := redis.NewClient(&redis.Options{Addr: *redisAddr})
		defer rdb.Close()
		p.enqueue = func(ctx context.Context, id string, body []byte) error {
			return rdb.XAdd(ctx, &redis.XAddArgs{
				Stream: "gopeer:{" + id + "}:jobs",
				Values: []any{"integration", id, "payload", body},
			}).Err()
		}
	default:
		log.Fatalf("-mode: %q is neither asynq nor xadd", *mode)
	}
	log.Printf("gopeer (%s) listening on %s", *mode, *listen)
	log.Fatal(http.ListenAndServe(*listen, p))
}
