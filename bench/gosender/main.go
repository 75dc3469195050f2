// Command gosender is the open-loop load generator of bench/e2e_latency_bench.py, not part of
// the product: it POSTs a ~1 KiB JSON webhook carrying the time it was sent ("sent_at", Unix
// seconds) at a fixed rate for a fixed time, on keep-alive connections, and prints
// {"sent", "rps", "statuses"} as JSON. A compiled sender on one core (GOMAXPROCS=1) leaves the
// CPU to what is measured: the Python senders took about a fifth of the 2-core machine at
// 2,000 webhooks/s, and that contention showed up in the latency they measured.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	url := flag.String("url", "", "where to POST")
	rate := flag.Int("rate", 1000, "webhooks per second")
	seconds := flag.Float64("seconds", 5, "how long to send")
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
	total := int(float64(*rate) * *seconds)
	var mu sync.Mutex
	statuses := map[string]int{}
	var wg sync.WaitGroup
	begin := time.Now()
	for n := 0; n < total; n++ {
		if delay := time.Until(begin.Add(time.Duration(n) * time.Second / time.Duration(*rate))); delay > 0 {
			time.Sleep(delay)
		}
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			sentAt := float64(time.Now().UnixNano()) / 1e9
			body := `{"n": ` + strconv.Itoa(n) + `, "sent_at": ` +
				strconv.FormatFloat(sentAt, 'f', 6, 64) + `, "note": "` + note + `"}`
			status := "error"
			answer, err := client.Post(*url, "application/json", bytes.NewBufferString(body))
			if err == nil {
				_, _ = io.Copy(io.Discard, answer.Body)
				_ = answer.Body.Close()
				status = strconv.Itoa(answer.StatusCode)
			}
			mu.Lock()
			statuses[status]++
			mu.Unlock()
		}(n)
	}
	wg.Wait()
	elapsed := time.Since(begin).Seconds()
	out, _ := json.Marshal(map[string]any{"sent": total, "rps": float64(total) / elapsed, "statuses": statuses})
	fmt.Println(string(out))
}
