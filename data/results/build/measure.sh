set -x
export CARGO_TARGET_DIR=/work/main/target-measure
cd /tmp/before && cargo test --release --no-run > /tmp/m_before_build.log 2>&1
cd /tmp/after && cargo test --release --no-run > /tmp/m_after_build.log 2>&1
for round in 1 2; do
  cd /tmp/before && touch src/lib.rs && { /usr/bin/time -f "%e s" cargo test --release > /tmp/m_before_$round.log 2>&1; } 2> /tmp/m_before_$round.time
  cd /tmp/after && touch src/lib.rs && { /usr/bin/time -f "%e s" cargo test --release > /tmp/m_after_$round.log 2>&1; } 2> /tmp/m_after_$round.time
done
cd /tmp/after && { CARGO_TARGET_DIR=/tmp/t-lib /usr/bin/time -f "%e s" cargo build --release -p advtrain > /tmp/m_lib.log 2>&1; } 2> /tmp/m_lib.time
cd /tmp/after && { CARGO_TARGET_DIR=/tmp/t-all /usr/bin/time -f "%e s" cargo build --release > /tmp/m_all.log 2>&1; } 2> /tmp/m_all.time
cd /tmp/after && { CARGO_TARGET_DIR=/tmp/t-all /usr/bin/time -f "%e s" cargo test --release > /tmp/m_all_test.log 2>&1; } 2> /tmp/m_all_test.time
echo done > /tmp/measure.done
