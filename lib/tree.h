/* tree.h - BSD red-black trees (libbsd's <sys/tree.h>) for allot.
 *
 * libbsd leaves `__unused` undefined because glibc uses that name for struct
 * members, yet RB_GENERATE_STATIC needs it. Include this header after every
 * system header of the file so the definition cannot reach glibc's. */
#ifndef ALLOT_LIB_TREE_H
#define ALLOT_LIB_TREE_H

#ifndef __unused
#define __unused __attribute__((unused))
#endif
#include <bsd/sys/tree.h>

#endif /* ALLOT_LIB_TREE_H */
