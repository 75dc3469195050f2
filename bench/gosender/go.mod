module retrieve.bench/gosender

go 1.22
