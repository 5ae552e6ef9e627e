import { defineConfig } from 'vitest/config';

// 'hmm-emu' (drivers/, scenarios/, tests) resolves to the TypeScript source through the
// package's `hmm-emu-source` export condition, never to a possibly stale dist/ build. Vitest
// loads test code through the SSR pipeline, so the condition must be set there too.
const conditions = ['hmm-emu-source', 'module', 'node', 'development|production'];

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions, externalConditions: ['hmm-emu-source'] } },
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    pool: 'threads',
  },
});
