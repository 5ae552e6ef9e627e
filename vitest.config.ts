import { defineConfig } from 'vitest/config';

export default defineConfig({
  resolve: { conditions: ['hmm-emu-source'] },
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    pool: 'threads',
  },
});
