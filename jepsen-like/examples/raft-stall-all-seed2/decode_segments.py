# Print the entries of raft_uv segment files (canonical/raft 0.15 format:
# an 8-byte format version, then batches: two CRCs, an entry count, 16-byte
# entry headers (term, type, size), payloads padded to 8 bytes).
#   python3 decode_segments.py FIRST LAST DATA_DIR/raft ...
import struct, sys, os
def entries(path):
    d = open(path,'rb').read()
    if len(d) < 8: return
    off = 8
    while off + 16 <= len(d):
        crc1, crc2, n = struct.unpack_from('<IIQ', d, off)
        if n == 0 or n > 100000: break
        off += 16
        hdrs = []
        for i in range(n):
            term, typ, size = struct.unpack_from('<QB3xI', d, off); off += 16
            hdrs.append((term, typ, size))
        for term, typ, size in hdrs:
            payload = d[off:off+size]; off += (size + 7)//8*8
            yield term, typ, payload
def decode_conf(p):
    # raft configuration encoding: version(1) n(8) then per server id(8) addr\0 role(1)
    try:
        n = struct.unpack_from('<Q', p, 1)[0]; off = 9; out=[]
        for i in range(n):
            sid = struct.unpack_from('<Q', p, off)[0]; off += 8
            end = p.index(b'\0', off); addr = p[off:end].decode(); off = end+1
            role = p[off]; off += 1; out.append((sid, addr.split(':')[0].split('.')[-1], ['standby','voter','spare'][role] if role<3 else role))
        return out
    except Exception as e: return repr(e)
def run(dirp, lo, hi):
    files = sorted(f for f in os.listdir(dirp) if '-' in f and not f.startswith('open'))
    idx = None
    for f in files:
        s,e = map(int, f.split('-')); 
        for _ in entries(os.path.join(dirp,f)): pass
        idx = e + 1
    opens = sorted((f for f in os.listdir(dirp) if f.startswith('open')), key=lambda f:int(f.split('-')[1]))
    for f in opens:
        for term, typ, p in entries(os.path.join(dirp,f)):
            if lo <= idx <= hi:
                t = {1:'COMMAND',2:'BARRIER',3:'CHANGE'}.get(typ, typ)
                extra = decode_conf(p) if typ == 3 else '%d bytes' % len(p)
                print(f'  {idx} term={term} {t} {extra}')
            idx += 1
    print('  last index', idx-1)
for n in sys.argv[3:]:
    print(n); run(n, int(sys.argv[1]), int(sys.argv[2]))
