// progress.h: a one-line progress bar with ETA on stderr, for terminals; callers fall back to
// plain log lines when stderr is not a terminal (ProgressBar::stderr_is_tty()).
//   [##########..........] 50/100  50%  01:02<01:02  loss 2.3141 lr 2.0e-04 ...
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace frugal {

// "mm:ss" or "h:mm:ss"
std::string format_duration(double seconds);

class ProgressBar {
 public:
  // total: the last step number; start: steps already done (resume) - excluded from the rate.
  ProgressBar(int64_t total, int64_t start, int width = 30);
  // done: steps completed so far; suffix: metrics shown after the bar. Redraws the line.
  void update(int64_t done, const std::string& suffix);
  void finish();                // newline after the last redraw
  // ETA from the mean rate since start (seconds), < 0 when unknown.
  double eta_seconds(int64_t done) const;
  std::string render(int64_t done, const std::string& suffix) const;  // the line, no '\r'
  static bool stderr_is_tty();

 private:
  int64_t total_, start_;
  int width_;
  std::chrono::steady_clock::time_point t0_;
  bool drawn_ = false;
};

}  // namespace frugal
