import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { runDemo } from '../../src/cli/demo.js';

describe('the engine demo (npm start)', () => {
  it('finds the ABBA deadlock with PCT, replays it identically and lockdep catches it without a deadlock', async () => {
    const report = await runDemo(1000);
    expect(report.ok).toBe(true);
    const text = report.lines.join('\n');
    expect(text).toContain('munmap blocked on mutex "driver.mutex" held by driver');
    expect(text).toContain('identical deadlock reproduced');
    expect(text).toContain('possible circular locking dependency: driver.mutex -> mmap_lock closes a cycle');
  });

  it('the built binary runs the demo and exits 0; bad usage exits 2', () => {
    const out = execFileSync(process.execPath, ['dist/src/cli/main.js', 'demo', '--schedules', '200'], { encoding: 'utf8' });
    expect(out).toContain('identical deadlock reproduced');
    let code = 0;
    try {
      execFileSync(process.execPath, ['dist/src/cli/main.js', 'demo', '--schedules', 'lots'], { encoding: 'utf8', stdio: 'pipe' });
    } catch (e) {
      code = (e as { status: number }).status;
    }
    expect(code).toBe(2);
  });
});
