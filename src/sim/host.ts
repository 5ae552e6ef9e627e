/**
 * The engine's only contact with host timers. Not a source of simulated time or order: it
 * fires a check after the host's microtask queue has drained. A run executes entirely in
 * microtasks, so if the check finds the run unfinished, the running task is parked on
 * something the engine does not control (a raw promise, a timer, I/O).
 *
 * Both an immediate and a zero timeout are armed: whichever host phase comes first (timers
 * or check) runs the check before any user timer created later in the run can fire.
 *
 * Returns the disarm function: call it when the run ends. Runs explored back to back never
 * give the host a turn (each run is microtasks only), so an armed check would keep its run's
 * whole world reachable until the exploration ends (gigabytes over a few thousand runs).
 */
export function afterHostTurn(check: () => void): () => void {
  let done = false;
  const once = (): void => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    clearImmediate(immediate);
    check();
  };
  // eslint-disable-next-line no-restricted-globals -- the uncontrolled-await watchdog, see above
  const timer = setTimeout(once, 0);
  // eslint-disable-next-line no-restricted-globals -- the uncontrolled-await watchdog, see above
  const immediate = setImmediate(once);
  return () => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    clearImmediate(immediate);
  };
}
