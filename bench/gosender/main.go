// Command gosender is the open-loop load generator of bench/e2e_latency_bench.py, not part of
// the product: it POSTs a ~1 KiB JSON webhook carrying the time it was sent ("sent_at", Unix
// seconds) at a fixed rate for a fixed time, on keep-alive connections, and prints
// {"sent", "rps", "statuses"} as JSON. A compiled sender on one core (GOMAXPROCS=1) leaves the
// CPU to what is measured: the Python senders took about a fifth of the 2-core machine at
// 2,000 webhooks/s, and that contention showed up in the latency they measured.
//
// With -warmup S it first sends at the same rate for S seconds, each of those webhooks marked
// "warmup": true and left out of what it prints, then goes straight on with the measured ones:
// the measured webhooks find the keep-alive connections a steady sender has. Without it, the
// first ~200 ms of a run from a cold start are the Go client opening connections as fast as
// requests come, which costs even a server that does nothing (bench/bare_app.py llhttp) up to
// ~300 ms per answer, and that start, not the server, was the run's p99.
//
// It also prints the answer latency it saw (sent to the answer's last byte), p50/p99/max in ms.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	url := flag.String("url", "", "where to POST")
	rate := flag.Int("rate", 1000, "webhooks per second")
	seconds := flag.Float64("seconds", 5, "how long to send")
	warmup := flag.Float64("warmup", 0, "seconds sent first at the same rate, not measured")
	flag.Parse()
	if *url == "" || *rate <= 0 {
		fmt.Fprintln(os.Stderr, "gosender -url URL -rate N -seconds S")
		os.Exit(2)
	}
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 1024, DisableCompression: true},
	}
	note := strings.Repeat("x", 900)
	warm := int(float64(*rate) * *warmup)
	total := int(float64(*rate) * *seconds)
	var mu sync.Mutex
	statuses, warmStatuses := map[string]int{}, map[string]int{}
	answered := make([]float64, total) // ms from sent to the answer's last byte
	var wg sync.WaitGroup
	begin := time.Now()
	var measured time.Time
	for n := 0; n < warm+total; n++ {
		if delay := time.Until(begin.Add(time.Duration(n) * time.Second / time.Duration(*rate))); delay > 0 {
			time.Sleep(delay)
		}
		if n == warm {
			measured = time.Now()
		}
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			sent := time.Now()
			sentAt := float64(sent.UnixNano()) / 1e9
			body := `{"n": ` + strconv.Itoa(n) + `, "sent_at": ` +
				strconv.FormatFloat(sentAt, 'f', 6, 64) + `, "warmup": ` +
				strconv.FormatBool(n < warm) + `, "note": "` + note + `"}`
			status := "error"
			answer, err := client.Post(*url, "application/json", bytes.NewBufferString(body))
			if err == nil {
				_, _ = io.Copy(io.Discard, answer.Body)
				_ = answer.Body.Close()
				status = strconv.Itoa(answer.StatusCode)
			}
			took := float64(time.Since(sent).Nanoseconds()) / 1e6
			mu.Lock()
			if n < warm {
				warmStatuses[status]++
			} else {
				statuses[status]++
				answered[n-warm] = took
			}
			mu.Unlock()
		}(n)
	}
	wg.Wait()
	elapsed := time.Since(measured).Seconds()
	sort.Float64s(answered)
	at := func(p float64) float64 {
		if len(answered) == 0 {
			return 0
		}
		return answered[min(len(answered)-1, int(p*float64(len(answered))))]
	}
	out, _ := json.Marshal(map[string]any{
		"sent": total, "rps": float64(total) / elapsed, "statuses": statuses,
		"warmup_statuses": warmStatuses,
		"answer_ms":       map[string]float64{"p50": at(0.5), "p99": at(0.99), "max": at(1)},
	})
	fmt.Println(string(out))
}
