// ESLint flat config. Determinism: src/, drivers/ and scenarios/ may not read the wall clock,
// draw host randomness or start host timers; time and randomness come from the engine.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const nondeterminism = 'is nondeterministic: use the engine (virtual clock, engine.choose, engine.sleep)';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'coverage/**', 'scratch/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      parserOptions: { projectService: { allowDefaultProject: ['eslint.config.js'] }, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
      'no-restricted-syntax': ['error', { selector: 'TSEnumDeclaration', message: 'no TS enums: use consts' }],
    },
  },
  {
    files: ['src/**/*.ts', 'drivers/**/*.ts', 'scenarios/**/*.ts'],
    rules: {
      'no-restricted-properties': [
        'error',
        { object: 'Date', property: 'now', message: `Date.now ${nondeterminism}` },
        { object: 'Math', property: 'random', message: `Math.random ${nondeterminism}` },
        { object: 'performance', property: 'now', message: `performance.now ${nondeterminism}` },
      ],
      'no-restricted-globals': [
        'error',
        { name: 'setTimeout', message: `setTimeout ${nondeterminism}` },
        { name: 'setInterval', message: `setInterval ${nondeterminism}` },
        { name: 'setImmediate', message: `setImmediate ${nondeterminism}` },
      ],
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } },
  },
);
