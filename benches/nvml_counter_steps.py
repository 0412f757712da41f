"""How often NVML's energy counter (nvmlDeviceGetTotalEnergyConsumption) moves, and by how much.

    python3 benches/nvml_counter_steps.py [GPU index] [seconds]

Polls the counter every ~0.2 ms for a few seconds (the GPU idle or busy, as it is) and prints the
intervals between changes and the energy per step. Needs only the driver (libnvidia-ml.so.1).
"""
import ctypes
import statistics
import sys
import time

index = int(sys.argv[1]) if len(sys.argv) > 1 else 0
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
nvml = ctypes.CDLL("libnvidia-ml.so.1")
assert nvml.nvmlInit_v2() == 0, "nvmlInit failed"
handle = ctypes.c_void_p()
assert nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) == 0
mj = ctypes.c_ulonglong()


def read():
    rc = nvml.nvmlDeviceGetTotalEnergyConsumption(handle, ctypes.byref(mj))
    assert rc == 0, f"nvmlDeviceGetTotalEnergyConsumption: {rc}"
    return mj.value


calls = 0
t_call = time.perf_counter()
last, steps = read(), []
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    v = read()
    calls += 1
    if v != last:
        steps.append((time.perf_counter(), v - last))
        last = v
    time.sleep(0.0002)
call_us = (time.perf_counter() - t_call) / max(calls, 1) * 1e6
gaps = [(b[0] - a[0]) * 1e3 for a, b in zip(steps, steps[1:])]
if not gaps:
    print(f"the counter moved {len(steps)} times in {seconds} s")
    sys.exit(0)
print(
    f"GPU {index}: {len(steps)} steps in {seconds} s; interval ms: median "
    f"{statistics.median(gaps):.1f}, min {min(gaps):.1f}, max {max(gaps):.1f}; "
    f"mJ per step: median {statistics.median(s[1] for s in steps):.0f}; "
    f"one poll (read + 0.2 ms sleep) {call_us:.0f} us"
)
