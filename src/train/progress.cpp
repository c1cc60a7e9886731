// progress.cpp: the terminal progress bar (see progress.h).
#include "src/train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace frugal {

std::string format_duration(double s) {
  if (!(s >= 0) || !std::isfinite(s)) return "--:--";
  long t = (long)std::llround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%02ld:%02ld", t / 60, t % 60);
  return buf;
}

ProgressBar::ProgressBar(int64_t total, int64_t start, int width)
    : total_(std::max<int64_t>(total, 1)), start_(start), width_(width),
      t0_(std::chrono::steady_clock::now()) {}

bool ProgressBar::stderr_is_tty() { return isatty(fileno(stderr)) != 0; }

double ProgressBar::eta_seconds(int64_t done) const {
  const int64_t k = done - start_;
  if (k <= 0) return -1.0;
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  return el / (double)k * (double)std::max<int64_t>(total_ - done, 0);
}

std::string ProgressBar::render(int64_t done, const std::string& suffix) const {
  const double frac = std::clamp((double)done / (double)total_, 0.0, 1.0);
  const int fill = (int)(frac * width_);
  std::string bar(fill, '#');
  bar.append(width_ - fill, '.');
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  char head[160];
  std::snprintf(head, sizeof head, "[%s] %lld/%lld %3d%% %s<%s", bar.c_str(), (long long)done,
                (long long)total_, (int)(frac * 100), format_duration(el).c_str(),
                format_duration(eta_seconds(done)).c_str());
  return std::string(head) + (suffix.empty() ? "" : "  " + suffix);
}

void ProgressBar::update(int64_t done, const std::string& suffix) {
  // \r + clear-to-end-of-line so a shorter line leaves no tail
  std::fprintf(stderr, "\r%s\033[K", render(done, suffix).c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

}  // namespace frugal
