#include "cdecompress.h"
