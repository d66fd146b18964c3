"""The module graph of src/: file-level and room-level (top module, see
docs/ARCHITECTURE.md) edges, and their cycles. Test modules are left out.

    python3 scripts/module_cycles.py [src] [-v]

Prints both lists of cycles (`-v` also prints the room edges) and exits 1
when rooms form a cycle: a room may depend on another only if that one does
not depend back on it (scripts/test.sh checks it)."""
import os, re, sys
args = [a for a in sys.argv[1:] if not a.startswith('-')]
root = args[0] if args else 'src'
mods = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs') or f == 'main.rs' and d == root: continue
        p = os.path.join(d, f); rel = os.path.relpath(p, root)[:-3].split(os.sep)
        if rel[-1] in ('mod', 'lib'): rel = rel[:-1]
        mods[tuple(rel)] = p
def resolve(path):
    # longest prefix that is a module
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in mods: return tuple(path[:n])
    return None
def expand(body):
    # expand use-trees: a::{b, c::{d}} -> [a::b, a::c::d]
    body = body.strip()
    m = re.match(r'^([\w:]*?)\{(.*)\}$', body, re.S)
    if not m: return [body]
    pre, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ''
    for ch in inner:
        if ch == '{': depth += 1
        if ch == '}': depth -= 1
        if ch == ',' and depth == 0: parts.append(cur); cur = ''
        else: cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip(): out += [pre + x for x in expand(p.strip())]
    return out
edges = {}
for m, p in mods.items():
    src = open(p).read()
    src = re.split(r'#\[cfg\(test\)\]\s*mod tests', src)[0]
    src = re.sub(r'//[^\n]*', '', src)
    refs = []
    for u in re.findall(r'\buse\s+([^;]+);', src, re.S):
        refs += expand(re.sub(r'\s+', '', u))
    refs += re.findall(r'\b((?:crate|super)(?:::\w+)+)', src)
    for r in refs:
        segs = [s for s in r.split('::') if s and s != 'self']
        if not segs: continue
        if segs[0] == 'crate': base = []; segs = segs[1:]
        elif segs[0] == 'super':
            base = list(m[:-1]) if not p.endswith('mod.rs') else list(m[:-1])
            segs = segs[1:]
            while segs and segs[0] == 'super': base = base[:-1]; segs = segs[1:]
        else:
            # relative to this module: child modules
            if tuple(list(m) + segs[:1]) in mods: base = list(m)
            else: continue
        t = resolve(base + segs)
        if t and t != m: edges.setdefault(m, set()).add(t)
def scc(nodes, E):
    idx, low, st, on, out, c = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in E.get(v, ()):
            if w not in idx: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(comp)
    for v in nodes:
        if v not in idx: visit(v)
    return [c for c in out if len(c) > 1]
name = lambda m: '::'.join(m) or 'crate'
print('file-level cycles:')
for comp in scc(list(mods), edges): print('  ', sorted(name(x) for x in comp))
room = lambda m: m[:1]
R = {}
for a, bs in edges.items():
    for b in bs:
        if room(a) != room(b): R.setdefault(room(a), set()).add(room(b))
print('room-level cycles:')
room_cycles = scc(sorted({room(m) for m in mods}), R)
for comp in room_cycles: print('  ', sorted(name(x) for x in comp))
if '-v' in sys.argv:
    for a in sorted(R): print(name(a), '->', ', '.join(sorted(name(b) for b in R[a])))
sys.exit(1 if room_cycles else 0)
